"""Cross-validation folds: every perturbation held out once, validation inside each fold, and
no test perturbation reaching the network's training or a post-hoc fit."""

import numpy as np
import pytest

from departures_core import calibration, folds, runs
from departures_core.config import DataConfig, RunConfig
from departures_core.data import make_split, populations
from departures_core.errors import SplitError

CFG = DataConfig(cell_type_key="cell_type")


@pytest.fixture(scope="module")
def prepared(demo):
    return runs.prepare(demo, RunConfig(data=CFG))


def _perturbations(adata) -> list[str]:
    return sorted(set(adata.obs["condition"].astype(str)) - {"control"})


def test_every_perturbation_is_held_out_in_exactly_one_fold():
    perts = [f"G{i}" for i in range(33)]
    made = folds.make_folds(perts, ["a", "b"], 4, by="perturbation", seed=0)
    held = [p for f in made for p in f.holdout]
    assert sorted(held) == sorted(perts)  # once each, none left out
    sizes = [len(f.holdout) for f in made]
    assert max(sizes) - min(sizes) <= 1
    again = folds.make_folds(perts, ["a", "b"], 4, by="perturbation", seed=0)
    assert again == made  # seeded
    assert folds.make_folds(perts, ["a", "b"], 4, by="perturbation", seed=1) != made


def test_cell_type_folds_hold_out_one_distinct_cell_type_each():
    types = ["B", "CD4T", "CD8T", "DC", "NK", "CD14", "FCGR3A"]
    made = folds.make_folds(["stim"], types, 4, by="cell_type", seed=0)
    held = [f.holdout_cell_types for f in made]
    assert all(len(h) == 1 for h in held)
    assert len({h[0] for h in held}) == 4 and {h[0] for h in held} <= set(types)
    assert all(not f.holdout for f in made)


def test_impossible_folds_are_refused():
    with pytest.raises(SplitError, match="--folds"):
        folds.make_folds(["A", "B"], ["x"], 3, by="perturbation", seed=0)
    with pytest.raises(SplitError, match="--folds"):
        folds.make_folds(["A"], ["x", "y"], 1, by="cell_type", seed=0)


def test_folds_round_trip_through_disk(tmp_path):
    made = folds.make_folds([f"G{i}" for i in range(9)], ["x"], 3, by="perturbation", seed=2)
    folds.write(made, tmp_path / "folds.json", dataset="toy")
    assert folds.read(tmp_path / "folds.json") == made


def test_no_test_perturbation_reaches_training_or_the_post_hoc_fit(prepared):
    perts = _perturbations(prepared)
    made = folds.make_folds(perts, ["k562"], 4, by="perturbation", seed=0)
    for fold in made:
        cfg = folds.fold_config(CFG, fold)
        data = populations(prepared, cfg, seed=0)
        test = set(fold.holdout)
        assert {c.perturbation for c in data.heldout_conditions()} == test
        trained = {c.perturbation for c in data.train_conditions()}
        validation = {c.perturbation for c in data.validation_conditions()}
        assert not trained & test and not validation & test
        assert not trained & validation
        # about 20 % of the fold's training perturbations are validation ones
        n_train = len(perts) - len(test)
        assert len(validation) == round(0.2 * n_train)
        assert set(data.split.train) == set(perts) - test

        seen = []

        def spy(cond, rows, data=data, seen=seen):
            seen.append(cond)
            return data.x[rows]

        fitted = calibration.fit_unaffected(data, spy, seed=0)
        assert seen and not {c.perturbation for c in seen} & test
        assert not {k.split("|")[0] for k in fitted["condition"]} & test
        unseen = set(fitted["unseen"]["condition"])
        assert {k.split("|")[0] for k in unseen} == validation


def test_cell_type_folds_keep_a_validation_cell_type():
    types = ["P1", "P2", "P3", "P4", "P5"]
    cfg = folds.fold_config(CFG, folds.Fold(0, holdout_cell_types=("P1",)))
    split = make_split(["drug"], types, cfg, seed=0)
    (val_type,) = split.validation_cell_types
    assert val_type in types[1:] and not split.validation
    assert set(split.unseen_cell_types) == {"P1", val_type}
    assert split.is_validation("drug", val_type) and not split.is_validation("drug", "P1")
    assert not split.is_validation("drug", next(t for t in types[1:] if t != val_type))


def test_too_few_training_units_keep_them_all(prepared):
    # the demo's 3 training cell lines: one left out would cost a third of what it learns
    cfg = folds.fold_config(CFG, folds.Fold(0, holdout_cell_types=("A172",)))
    data = populations(prepared, cfg, seed=0)
    assert {c.cell_type for c in data.heldout_conditions()} == {"A172"}
    assert not data.validation_conditions()


def test_a_validation_condition_never_uses_its_own_fit():
    fractions = {
        "condition": {"T|x|0": 0.5},
        "effect": {"T|x|0": 1.0},
        "cell_type": {"x": 0.5},
        "overall": 0.5,
        "unseen": {
            "condition": {"V1|x|0": 0.9, "V2|x|0": 0.1},
            "effect": {"V1|x|0": 1.0, "V2|x|0": 1.0},
        },
    }
    # V1 is read off the other validation condition, never itself
    w, source = calibration.unaffected_source(fractions, "V1", "x", 0.0, effect=1.0)
    assert w == pytest.approx(0.1) and "validation" in source
    # a test condition is read off both
    w, _ = calibration.unaffected_source(fractions, "NEW", "x", 0.0, effect=1.0)
    assert w == pytest.approx(np.mean([0.9, 0.1]))
    # a training condition keeps its own
    assert calibration.unaffected_source(fractions, "T", "x", 0.0, effect=1.0)[0] == 0.5
