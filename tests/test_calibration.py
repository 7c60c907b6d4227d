"""A faithful generator: training conditions reproduced without bias, null conditions near the
noise floor, non-responders estimated, and the calibration report of `evaluate`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from departures_core import (
    calibration,
    evaluate,
    explore,
    keys,
    metrics,
    notes,
    runs,
    spread,
    transfer,
)
from departures_core.config import DataConfig, RunConfig, TrainConfig

ROOT = Path(evaluate.__file__).resolve().parent.parent

NULL = "NULL"  # control cells relabelled as a perturbation: it changes nothing


@pytest.fixture(scope="module")
def null_demo(demo):
    """The demo with half of the K562 and A172 control cells relabelled ``NULL``."""
    adata = demo.copy()
    rng = np.random.default_rng(0)
    labels = adata.obs["condition"].astype(str).to_numpy().copy()
    for cell_type in ("k562", "A172"):
        ctrl = np.flatnonzero((labels == "control") & (adata.obs["cell_type"] == cell_type))
        labels[rng.choice(ctrl, len(ctrl) // 2, replace=False)] = NULL
    adata.obs["condition"] = pd.Categorical(labels)
    return adata


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, null_demo):
    """A default-size run of the demo with a null condition, 1,500 steps (the default is
    4,000): about a minute on 2 cores."""
    cfg = RunConfig(
        # validation: K562-only singles, so that MAP2K3 is trained in all four cell types
        data=DataConfig(
            cell_type_key="cell_type",
            holdout=("KLF1", "MAPK1"),
            validation=("FOXO4", "HK2", "MIDN", "SLC38A2", "TMSB4X"),
        ),
        train=TrainConfig(steps=1500, device="cpu"),
    )
    run_dir = tmp_path_factory.mktemp("calibrated") / "run"
    runs.train(null_demo, cfg, run_dir, progress_bar=False)
    return runs.open_run(run_dir)


@pytest.fixture(scope="module")
def table(calibrated_run):
    return evaluate.calibrate_run(calibrated_run, steps=25, progress=False)


def test_training_conditions_have_no_expression_or_variance_bias(table):
    """The bias of the old sampler (totals +5-9 %, variance 1.2-1.4x) must not return."""
    train = table[table["split"] == "train"]
    assert len(train) >= 30
    assert abs(train["total_bias"].median()) <= 0.03
    assert 0.8 <= train["variance_ratio"].median() <= 1.25
    assert abs(train["active_genes_pred"].median() / train["active_genes_obs"].median() - 1) < 0.1


def test_training_conditions_are_as_close_as_the_unchanged_controls(table):
    train = table[table["split"] == "train"]
    assert train["e_distance"].median() <= train["e_distance_control"].median() + 0.02
    assert (train["mean_error"] < train["mean_error_control"]).mean() > 0.5


def test_trained_conditions_keep_which_genes_are_active(calibrated_run):
    """Predictions of training conditions switch on the genes the observed cells have on."""
    data = calibrated_run.data
    predict = evaluate.model_predictor(calibrated_run, steps=20, mean_cells=0)
    conds = [c for c in data.train_conditions() if c.cell_type == "k562"][:8]
    pcc = [metrics.activation_pcc(predict(c), data.x[c.perturbed]) for c in conds]
    assert np.median(pcc) > 0.9


def test_a_perturbation_that_changes_nothing_is_reproduced_near_the_noise_floor(
    calibrated_run, table
):
    nulls = table[table["perturbation"] == NULL]
    assert set(nulls["cell_type"]) == {"k562", "A172"}
    assert (nulls["e_distance"] <= 0.2).all()
    assert (nulls["e_distance"] <= nulls["e_distance_control"] + 0.1).all()
    # more of its cells are left unchanged than of the perturbations with a clear effect
    fractions = calibrated_run.unaffected
    unaffected = [calibration.unaffected_for(fractions, NULL, ct, 0.0) for ct in ("k562", "A172")]
    clear = table[(table["split"] == "train") & (table["e_distance_control"] > 0.5)]
    effects = [
        calibration.unaffected_for(fractions, r.perturbation, r.cell_type, 0.0)
        for r in clear.itertuples()
    ]
    assert len(effects) >= 5
    assert np.mean(unaffected) > np.median(effects) + 0.1, (unaffected, effects)


def test_the_report_names_every_condition_of_both_splits(calibrated_run, table):
    assert list(table.columns) == list(calibration.COLUMNS)
    assert set(table["split"]) == {"train", "held_out"}
    assert set(table.loc[table["split"] == "held_out", "perturbation"]) == {"KLF1", "MAPK1"}
    summary = calibration.summarize(table)
    assert {"train", "train_null", "held_out"} <= set(summary.index)
    assert (table["noise_floor"] >= 0).all()


def test_unaffected_fraction_recovers_a_known_mixture():
    rng = np.random.default_rng(1)
    ctrl = rng.normal(0.0, 1.0, (400, 20))
    responders = rng.normal(0.0, 1.0, (400, 20)) + 2.0
    for w in (0.0, 0.3, 0.7, 1.0):
        n = int(round(w * 400))
        obs = np.concatenate([rng.normal(0.0, 1.0, (n, 20)), responders[: 400 - n] + 0.0])
        pred = rng.normal(0.0, 1.0, (400, 20)) + 2.0
        assert calibration.unaffected_fraction(pred, ctrl, obs) == pytest.approx(w, abs=0.08)


def test_held_out_conditions_take_the_fraction_of_training_conditions_with_a_like_effect():
    keys_ = [f"P{i}|k562|0" for i in range(8)]
    effects = [0.1, 0.12, 0.15, 0.2, 0.8, 1.0, 1.2, 1.5]  # four nulls, four strong effects
    fractions = {
        "condition": dict(zip(keys_, [1.0, 0.9, 1.0, 0.8, 0.0, 0.1, 0.0, 0.0], strict=True)),
        "effect": dict(zip(keys_, effects, strict=True)),
        "cell_type": {"k562": 0.45},
        "overall": 0.45,
    }
    strong = calibration.unaffected_for(fractions, "NEW", "k562", 0.0, effect=1.1)
    weak = calibration.unaffected_for(fractions, "NEW", "k562", 0.0, effect=0.13)
    assert strong < 0.1 and weak > 0.85
    assert calibration.unaffected_for(fractions, "NEW", "k562", 0.0, effect=5.0) < 0.05
    # no effect size (too few cells simulated): the cell type's median, as before
    assert calibration.unaffected_for(fractions, "NEW", "k562", 0.0) == 0.45
    assert calibration.unaffected_for(fractions, "P0", "k562", 0.0, effect=1.5) == 1.0
    # a run fitted before effect sizes were recorded
    old = {k: v for k, v in fractions.items() if k != "effect"}
    assert calibration.unaffected_for(old, "NEW", "k562", 0.0, effect=1.1) == 0.45


def test_a_cell_type_with_enough_training_conditions_takes_the_fraction_of_its_own():
    """Three CRISPRi lines leave most cells unchanged at effects where the CRISPRa line
    leaves few: a held-out perturbation in a line takes the fraction of that line's
    conditions with a like effect; a cell type with fewer than 3 conditions, of all."""
    keys_ = [f"P{i}|k562|0" for i in range(6)] + [f"P{i}|A172|0" for i in range(3)]
    fractions = {
        "condition": dict(zip(keys_, [0.0, 0.1, 0.0, 0.2, 0.1, 0.0, 1.0, 0.9, 0.95], strict=True)),
        "effect": dict(zip(keys_, [0.3, 0.35, 0.4, 0.3, 0.35, 0.4, 0.3, 0.35, 0.4], strict=True)),
        "cell_type": {"k562": 0.05, "A172": 0.95},
        "overall": 0.1,
    }
    w, source = calibration.unaffected_source(fractions, "NEW", "A172", 0.0, effect=0.35)
    assert w == pytest.approx(0.95) and "in A172" in source
    assert calibration.unaffected_for(fractions, "NEW", "k562", 0.0, effect=0.35) < 0.15
    w, source = calibration.unaffected_source(fractions, "NEW", "T98G", 0.0, effect=0.35)
    assert w == pytest.approx(np.mean([0.1, 0.1, 0.9])) and "in T98G" not in source


def test_the_share_of_non_responders_drawn_is_the_fraction():
    from departures_core.sample import draw_unchanged

    groups = [np.arange(0, 100), np.arange(100, 150), np.arange(150, 153)]
    keep = draw_unchanged(groups, [0.3, 1.0, 0.0], 153, seed=4)
    assert keep[:100].sum() == 30 and keep[100:150].all() and not keep[150:].any()
    # a fraction of a cell is drawn with that probability: the expected count is exact
    counts = [draw_unchanged([np.arange(10)], [0.25], 10, seed=s).sum() for s in range(400)]
    assert set(counts) == {2, 3} and np.mean(counts) == pytest.approx(2.5, abs=0.1)
    assert not np.array_equal(keep, draw_unchanged(groups, [0.3, 1.0, 0.0], 153, seed=5))


def test_non_responders_are_spread_evenly_over_the_control_cells_they_start_from():
    """2,000 cells started from 100 control cells (20 copies each, as the means of a
    prediction are read): every control cell gives 14 of its 20 copies as non-responders
    when 70 % do not respond, so the responders start from the same controls; without
    ``sources`` a random split leaves some control cells with far more than others."""
    from departures_core.sample import draw_unchanged

    sources = np.resize(np.arange(100), 2000)
    rows = np.arange(2000)
    for seed in range(5):
        keep = draw_unchanged([rows], [0.7], 2000, seed=seed, sources=sources)
        assert keep.sum() == 1400
        per_source = np.bincount(sources[keep], minlength=100)
        assert per_source.min() == per_source.max() == 14
    uneven = np.bincount(sources[draw_unchanged([rows], [0.7], 2000, seed=0)], minlength=100)
    assert uneven.max() - uneven.min() >= 4
    # a fraction that does not divide the copies: 7 or 8 of 20, never fewer or more
    keep = draw_unchanged([rows], [0.37], 2000, seed=3, sources=sources)
    assert keep.sum() == 740 and set(np.bincount(sources[keep], minlength=100)) <= {7, 8}


def test_a_held_out_condition_reports_where_its_fraction_comes_from(calibrated_run):
    data = calibrated_run.data
    cond = data.find("KLF1", "k562")
    row = (cond.perturbation, cond.cell_type, cond.dose)
    sim = runs.simulate_from(calibrated_run, cond.control, [row] * len(cond.control), steps=10)
    w, source = sim.responders[row]
    assert "predicted effect" in source
    assert 0.0 <= w <= 1.0
    assert "effect" in calibrated_run.unaffected
    assert set(calibrated_run.unaffected["effect"]) == set(calibrated_run.unaffected["condition"])


def test_non_responders_keep_their_control_cell_and_on_off_state_on_the_whole_path(
    calibrated_run,
):
    data = calibrated_run.data
    cond = data.find(NULL, "k562")
    rows = [(NULL, "k562", cond.dose)] * len(cond.control)
    sim = runs.simulate_from(calibrated_run, cond.control, rows, steps=5, trajectory=True)
    keep = sim.unchanged
    assert keep.mean() > 0.5
    x0 = data.x[cond.control]
    shift = calibrated_run.unaffected["shift"]["k562"]
    np.testing.assert_allclose(
        sim.prediction[keep], calibration.shift_active(x0[keep], shift), atol=1e-6
    )
    np.testing.assert_array_equal(sim.x_path[0, keep], x0[keep])
    np.testing.assert_array_equal(sim.x_path[-1, keep], sim.prediction[keep])
    # zeros stay zeros: a non-responder never switches a gene on
    assert not (sim.x_path[:, keep] > 0)[:, ~(x0[keep] > 0)].any()
    bridges = runs.simulate_from(calibrated_run, cond.control, rows, steps=5, responders=False)
    assert bridges.unchanged is None
    assert not np.allclose(bridges.prediction[keep], sim.prediction[keep])


def test_the_bridges_spread_is_measured_against_the_observed_cells_and_scaled_to_it():
    """Generated active values 30 % more spread out than the observed (as the bridges' noise
    leaves them in K562 at sigma = 0.5): the fit finds the factor per cell type from the
    genes active in enough cells, and scaling by it gives the observed spread back while
    each gene keeps its mean, its zeros and its active cells."""
    rng = np.random.default_rng(7)
    genes = 50
    share = rng.uniform(0.1, 0.9, genes)

    def cells(n, sd):
        values = np.maximum(rng.normal(2.0, sd, (n, genes)), 0.01)
        return (values * (rng.random((n, genes)) < share)).astype(np.float32)

    ratios = {
        "wide": [spread.ratios(cells(300, 0.52), cells(100, 0.4)) for _ in range(3)],
        "right": [spread.ratios(cells(300, 0.4), cells(100, 0.4)) for _ in range(3)],
    }
    factors = spread.fit(ratios)
    assert factors["cell_type"]["wide"] == pytest.approx(0.4 / 0.52, abs=0.04)
    assert factors["cell_type"]["right"] == pytest.approx(1.0, abs=0.04)
    assert spread.factor_for(factors, "unseen") == factors["overall"]
    assert spread.factor_for(None, "wide") == 1.0
    pred = cells(2000, 0.52)
    scaled = spread.scale(pred, factors["cell_type"]["wide"])
    np.testing.assert_array_equal(scaled > 0, pred > 0)
    _, sd = spread.active_sd(scaled)
    assert np.median(sd) == pytest.approx(0.4, abs=0.03)
    active_mean = lambda x: (x * (x > 0)).sum(0) / (x > 0).sum(0)  # noqa: E731
    np.testing.assert_allclose(active_mean(scaled), active_mean(pred), atol=0.02)


def test_a_run_spreads_the_bridges_cells_by_its_factor_and_says_so(calibrated_run):
    data = calibrated_run.data
    fitted = calibrated_run.unaffected["condition"]
    cond = min(  # a trained condition with most cells responding: its own fraction
        (c for c in data.train_conditions() if c.cell_type == "k562"),
        key=lambda c: fitted[calibration.condition_key(c.perturbation, c.cell_type, c.dose)],
    )
    rows = [(cond.perturbation, "k562", cond.dose)] * len(cond.control)

    def simulate(factor):
        factors = {"cell_type": {"k562": factor}, "overall": 1.0}
        run = dataclasses.replace(
            calibrated_run, unaffected={**calibrated_run.unaffected, "spread": factors}
        )
        return runs.simulate_from(run, cond.control, rows, steps=5, trajectory=True)

    plain, wide = simulate(1.0), simulate(1.2)
    np.testing.assert_array_equal(plain.unchanged, wide.unchanged)
    bridged = ~plain.unchanged
    assert bridged.sum() > 10
    _, sd_plain = spread.active_sd(plain.prediction[bridged])
    _, sd_wide = spread.active_sd(wide.prediction[bridged])
    ok = sd_plain > 0.05
    assert np.median(sd_wide[ok] / sd_plain[ok]) == pytest.approx(1.2, abs=0.03)
    np.testing.assert_array_equal(wide.prediction > 0, plain.prediction > 0)
    on = bridged[:, None] & (wide.prediction > 0)  # the path ends at the spread cells
    np.testing.assert_allclose(wide.x_path[-1][on], wide.prediction[on], atol=1e-5)
    shown = explore.ConditionCells(
        *rows[0],
        False,
        data.genes,
        *(np.empty((0, 1)),) * 3,
        np.arange(0),
        wide,
        seed=0,
    )
    assert "spread ×1.20" in notes.responder_note(shown)
    assert "spread ×" not in notes.responder_note(dataclasses.replace(shown, simulation=plain))


def _one_cell_type(blocks: list[np.ndarray], labels: list[str]):
    """The training data of a screen in one cell type ``a``: cells ``blocks`` stacked, their
    perturbations ``labels`` (``ctrl``: control), nothing held out."""
    import anndata as ad

    from departures_core.data import populations

    obs = pd.DataFrame({"pert": labels, "ct": "a"})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(np.vstack(blocks), obs=obs)
    adata.var_names = [f"g{i}" for i in range(blocks[0].shape[1])]
    cfg = DataConfig(
        perturbation_key="pert",
        control="ctrl",
        cell_type_key="ct",
        holdout_fraction=0.0,
        validation_fraction=0.0,
    )
    return populations(adata, cfg, seed=0)


def test_the_fit_simulates_each_condition_once_and_measures_the_spread_on_a_few(monkeypatch):
    """A screen of thousands of perturbations: the fit keeps the simulations of only
    `SPREAD_CONDITIONS` conditions per cell type (those that measure its spread) in memory,
    and still simulates every condition once."""
    rng = np.random.default_rng(8)
    genes, labels, blocks = 15, [], []
    for p in ("ctrl", "P1", "P2", "P3", "P4", "P5"):
        x = np.maximum(rng.normal(1.5, 0.5, (60, genes)), 0.05) * (rng.random((60, genes)) < 0.6)
        blocks.append(x.astype(np.float32))
        labels += [p] * 60
    data = _one_cell_type(blocks, labels)
    calls = []

    def bridges(cond, rows):  # generated values 1.5 times as spread out as the cells
        calls.append(cond.perturbation)
        x = data.x[rows]
        centre = (x * (x > 0)).sum(0) / np.maximum((x > 0).sum(0), 1)
        return np.where(x > 0, np.maximum(centre + 1.5 * (x - centre), 0.01), 0)

    measured = []
    monkeypatch.setattr(calibration, "SPREAD_CONDITIONS", 2)
    real = spread.ratios
    monkeypatch.setattr(spread, "ratios", lambda a, b: measured.append(1) or real(a, b))
    fit = calibration.fit_unaffected(data, bridges, seed=0)
    assert sorted(calls) == ["P1", "P2", "P3", "P4", "P5"]
    assert len(measured) == 2
    assert fit["spread"]["cell_type"]["a"] == pytest.approx(1 / 1.5, abs=0.1)
    assert len(fit["condition"]) == 5


def test_the_shift_all_perturbed_cells_share_is_recovered():
    """Non-responders = control cells + a shift of their active genes; the responders are
    modelled by the bridges. Summed over conditions with different fractions, the
    least-squares terms give the shift back."""
    rng = np.random.default_rng(3)
    genes = 30
    shift = rng.normal(0.0, 0.3, genes)

    def cells(n):
        return np.maximum(rng.normal(1.0, 0.5, (n, genes)), 0) * (rng.random((n, genes)) < 0.6)

    num, den = 0.0, 0.0
    for w in (0.2, 0.5, 0.8, 1.0):
        n = 4000
        effect = rng.normal(0.0, 1.0, genes)
        stay = int(w * n)
        obs = np.concatenate(
            [calibration.shift_active(cells(stay), shift), np.maximum(cells(n - stay) + effect, 0)]
        )
        pred = np.maximum(cells(n) + effect, 0)
        a, b = calibration.shift_terms(w, pred, cells(n), obs)
        num, den = num + a, den + b
    found = calibration.solve_shift(num, den)
    assert np.abs(found - shift).max() < 0.1
    assert np.corrcoef(found, shift)[0, 1] > 0.95
    # nothing constrains a gene no control cell expresses
    assert calibration.solve_shift(np.zeros(3), np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_the_shift_is_measured_on_every_perturbed_cell_not_only_the_validation_cells():
    """Three perturbations of 400 cells each that change nothing but the shift all perturbed
    cells share; 10 of each are validation cells. The fractions are fitted on those, but the
    shift is a mean that all 1,200 cells measure: from 30 cells it came out with r = 0.73."""
    rng = np.random.default_rng(2)
    genes = 20
    shift = rng.normal(0.0, 0.4, genes)

    def cells(n):
        x = np.maximum(rng.normal(1.5, 0.6, (n, genes)), 0) * (rng.random((n, genes)) < 0.7)
        return x.astype(np.float32)

    blocks, labels = [cells(400)], ["ctrl"] * 400
    for p in ("P1", "P2", "P3"):
        blocks.append(calibration.shift_active(cells(400), shift.astype(np.float32)))
        labels += [p] * 400
    data = _one_cell_type(blocks, labels)
    validation = {
        (c.perturbation, c.cell_type, c.dose): c.perturbed[:10] for c in data.train_conditions()
    }
    fit = calibration.fit_unaffected(
        data, lambda cond, rows: data.x[rows] + 5.0, observed=validation, seed=0
    )
    assert min(fit["condition"].values()) > 0.95  # nothing responds
    assert np.corrcoef(fit["shift"]["a"], shift)[0, 1] > 0.95


def test_a_shift_the_data_hardly_constrain_is_shrunk_to_nothing():
    """Few cells and no true shift (a cell line with 100 controls): the raw per-gene estimates
    are noise, up to several units for rare genes; the shrunk shift stays near 0."""
    rng = np.random.default_rng(4)
    genes = 200
    active = rng.uniform(0.02, 0.8, genes)

    def cells(n):
        return np.maximum(rng.normal(1.5, 0.7, (n, genes)), 0) * (rng.random((n, genes)) < active)

    num, den = 0.0, 0.0
    for w in (0.7, 0.9, 1.0):
        a, b = calibration.shift_terms(w, cells(100), cells(100), cells(50))
        num, den = num + a, den + b
    raw = np.abs(num / den).max()
    assert raw > 1.0
    assert np.abs(calibration.solve_shift(num, den)).max() < 0.2 * raw


def _screen_in_cell_types(levels: dict[str, float], changes: dict[str, list[float]]):
    """Controls of each cell type at ``levels`` (gene 2's mean), and P changing genes 0-2 by
    ``changes[cell_type]``; ``held`` has P held out."""
    import anndata as ad

    from departures_core.data import populations

    rng = np.random.default_rng(5)
    rows, obs = [], []
    for ct, level in levels.items():
        for label in ("ctrl", "P"):
            x = rng.gamma(4.0, 0.25, size=(200, 4))
            x[:, 2] += level
            if label == "P":
                x[:, :3] += changes.get(ct, [0.0, 0.0, 0.0])
            rows.append(np.maximum(x, 0))
            obs += [(label, ct)] * 200
    frame = pd.DataFrame(obs, columns=["pert", "ct"])
    frame.index = frame.index.astype(str)
    adata = ad.AnnData(np.vstack(rows).astype(np.float32), obs=frame)
    adata.var_names = [f"g{i}" for i in range(4)]
    cfg = DataConfig(
        perturbation_key="pert",
        control="ctrl",
        cell_type_key="ct",
        holdout_cell_types=("held",),
        validation_fraction=0.0,
    )
    return populations(adata, cfg, seed=0)


def test_the_changes_that_carry_over_between_cell_types_are_told_from_those_that_do_not():
    """Across four cell types P raises gene 0 by 1 everywhere, gene 1 by 0 or 2 (no pattern),
    and sets gene 2 back to a common level (a change the controls explain); gene 3 never
    changes. Only gene 1 keeps a large unexplained variance, and a predicted change of it
    is kept in few cells."""
    levels = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "held": 1.5}
    changes = {
        ct: [1.0, 2.0 * (i % 2), -level, 0.0] for i, (ct, level) in enumerate(levels.items())
    }
    data = _screen_in_cell_types(levels, {ct: c[:3] for ct, c in changes.items()})
    fit = transfer.fit(data)
    assert set(fit) == {"P|0"} and fit["P|0"]["cell_types"] == ["a", "b", "c", "d"]
    variance = np.array(fit["P|0"]["variance"])
    assert variance[1] > 0.5 and variance[1] > 10 * max(variance[0], variance[2])
    # the cell types differ in gene 2 only (control levels 0, 1, 2, 3: variance 5/3)
    identity = np.array(fit["P|0"]["identity"])
    assert identity[2] == pytest.approx(5 / 3, rel=0.1) and identity[[0, 1, 3]].max() < 0.01
    weight = transfer.weight([1.0, 1.0, 1.0, 0.0], variance)
    assert weight[0] > 0.8 and weight[2] > 0.8 and weight[1] < 0.7 and weight[3] == 0.0
    # the held-out cell type's controls sit at level 1.5: gene 2 is expected to fall by 1.5
    held = data.heldout_conditions()[0]
    expected = transfer.expected_change(fit["P|0"], data.x.mean(held.control))
    np.testing.assert_allclose(expected[[0, 2, 3]], [1.0, -1.5, 0.0], atol=0.15)
    # a change the model missed but the controls foretell is kept all the same
    missed = transfer.weight(np.zeros(4), variance, expected)
    assert missed[0] > 0.8 and missed[2] > 0.8 and missed[1] < 0.7
    # the page says the held-out condition was trained in other cell types, not never
    shown = explore.ConditionCells(
        "P", "held", 0.0, True, data.genes, *(np.empty((0, 4)),) * 3, np.arange(0), None, 0
    )
    note = notes.held_out_note(data, [shown])
    assert note == "P was held out in held; it was trained in a, b, c, d."
    never = dataclasses.replace(shown, perturbation="Q")
    assert notes.held_out_note(data, [never]) == "Never trained on (held out): Q."
    assert notes.held_out_note(data, [dataclasses.replace(shown, held_out=False)]) is None
    # two cell types leave the regression no degree of freedom: no estimate
    two = _screen_in_cell_types({"a": 0.0, "b": 1.0, "held": 1.5}, {"a": [1, 1, 1], "b": [1, 1, 1]})
    assert transfer.fit(two) == {}


def test_a_change_is_trusted_as_far_as_the_models_error_for_a_new_cell_type_allows():
    """The model's change for a new cell type is observed with an error that is largest where
    the cell types differ (it can mistake the new cell type for a trained one). Changes that
    agree with what the trained cell types expect are kept as they are; a change along the
    cell types' differences that none of them showed is not, and a change within the
    sampling noise counts for less."""
    variance = np.full(4, 0.01)
    expected = np.array([1.0, 0.0, 0.0, 0.0])
    identity = np.array([0.0, 0.0, 1.0, 0.0])  # the cell types differ in gene 2
    agree = np.array([1.0, 0.05, 0.0, 0.0])
    np.testing.assert_allclose(
        transfer.weight(agree, variance, expected, identity=identity),
        transfer.weight(agree, variance, expected),
    )
    stray = np.array([1.0, 0.0, 0.8, 0.0])  # gene 2 changed where no cell type changed it
    plain = transfer.weight(stray, variance, expected)
    trusted = transfer.weight(stray, variance, expected, identity=identity)
    assert plain[2] > 0.9 and trusted[2] < 0.1
    assert trusted[0] == pytest.approx(plain[0])  # the expected change is kept
    # the model's error is read off the changes themselves: agreeing ones show none
    assert transfer.model_error(stray, variance, expected, 0.0, identity) == pytest.approx(0.6)
    assert transfer.model_error(agree, variance, expected, 0.0, identity) == 0.0
    # a change no larger than its sampling noise is kept in fewer cells
    small = np.array([0.0, 0.1, 0.0, 0.0])
    noisy = transfer.weight(small, variance, expected, noise=np.full(4, 0.01))
    assert noisy[1] < 0.75 * transfer.weight(small, variance, expected)[1]


def test_a_perturbation_in_a_cell_type_it_was_not_trained_in_keeps_what_carries_over(
    calibrated_run,
):
    """MAP2K3 was trained in all four cell types; told it was not trained in k562, its k562
    prediction keeps each gene's change in a share of cells that grows with the change, and
    the other cells keep the gene's unperturbed value on the whole path."""
    import copy
    import dataclasses

    data = calibrated_run.data
    cond = data.find("MAP2K3", "k562")
    key = transfer.key("MAP2K3", cond.dose)
    fit = calibrated_run.unaffected["transfer"][key]
    assert "k562" in fit["cell_types"]
    row = ("MAP2K3", "k562", cond.dose)
    rows = [row] * len(cond.control)
    own = calibration.condition_key(*row)
    every_cell_responds = {  # the non-responders are tested above
        **calibrated_run.unaffected,
        "condition": {**calibrated_run.unaffected["condition"], own: 0.0},
    }
    as_trained = dataclasses.replace(calibrated_run, unaffected=every_cell_responds)
    trained = runs.simulate_from(as_trained, cond.control, rows, steps=5, trajectory=True)
    assert trained.transferred == {}  # a trained condition keeps its prediction
    unaffected = {
        **every_cell_responds,
        "transfer": {key: {**fit, "cell_types": [c for c in fit["cell_types"] if c != "k562"]}},
    }
    unseen = dataclasses.replace(calibrated_run, unaffected=unaffected)
    sim = runs.simulate_from(unseen, cond.control, rows, steps=5, trajectory=True)
    assert 0.0 < sim.transferred[row] < 1.0
    shown = explore.ConditionCells(
        *row, False, data.genes, *(np.empty((0, 1)),) * 3, np.arange(0), sim, seed=0
    )
    assert "never trained in k562" in notes.responder_note(shown)
    trained_shown = dataclasses.replace(shown, simulation=trained)
    assert "never trained" not in notes.responder_note(trained_shown)
    x0 = data.x[cond.control]
    end = calibration.shift_active(x0, calibrated_run.unaffected["shift"].get("k562"))
    kept = sim.prediction == end  # the cells' unperturbed values, as a non-responder's
    changed = np.abs(trained.prediction.mean(0) - x0.mean(0))
    order = np.argsort(changed)
    assert kept[:, order[-20:]].mean() < kept[:, order[:200]].mean()
    back = kept & (end != trained.prediction)
    assert back.any()
    np.testing.assert_array_equal(sim.x_path[0], x0)
    np.testing.assert_allclose(sim.x_path[-1][back], end[back], atol=1e-6)
    assert not (sim.x_path[:, back] > 0)[:, (x0 <= 0)[back]].any()  # zeros stay zeros
    config = unseen.model.config.replace(
        bridge=dataclasses.replace(unseen.model.config.bridge, transfer=False)
    )
    off = dataclasses.replace(unseen, model=copy.copy(unseen.model))
    off.model.config = config
    every = runs.simulate_from(off, cond.control, rows, steps=5, trajectory=True)
    np.testing.assert_array_equal(every.prediction, trained.prediction)


def test_pooled_perturbed_pools_the_training_perturbations_of_the_cell_type(calibrated_run):
    data = calibrated_run.data
    cond = data.find("KLF1", "k562")
    pooled = evaluate.pooled_perturbed_predictor(data)(cond)
    train_k562 = np.concatenate(
        [c.perturbed for c in data.train_conditions() if c.cell_type == "k562"]
    )
    assert len(pooled) == min(len(train_k562), 2000)
    assert metrics.e_distance(pooled, data.x[train_k562]) < 0.05


def test_evaluate_command_writes_the_calibration_report(calibrated_run, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "departures_core", "evaluate", str(calibrated_run.path)]
    cmd += ["--steps", "10", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(out / "calibration.csv")
    assert list(table.columns) == list(calibration.COLUMNS)
    assert "calibration" in proc.stdout and "train_null" in proc.stdout
    frame = pd.read_csv(out / "metrics.csv")
    assert list(frame.columns) == list(evaluate.COLUMNS)
    baselines = {"control", "mean_shift", "pooled_perturbed", "additive", "linear", "nearest"}
    assert set(frame["method"]) == {"departures", "noise_floor", *baselines}
    assert set(frame["split"]) == {"test", "validation"}  # the run has validation perturbations
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]["departures"]["e_distance"]) == {"mean", "median", "n"}
    assert "departures" in proc.stdout and "e_distance" in proc.stdout
    fractions = json.loads((calibrated_run.path / keys.RESPONDERS_FILE).read_text())
    assert set(fractions) == {
        "condition",
        "effect",
        "cell_type",
        "overall",
        "shift",
        "transfer",
        "spread",
        "target",
        "unseen",  # the validation conditions' fit, for conditions the network never saw
    }
    assert set(fractions["unseen"]["condition"]) == {
        f"{p}|k562|0" for p in ("FOXO4", "HK2", "MIDN", "SLC38A2", "TMSB4X")
    }
    assert fractions["target"] is None  # one perturbed gene (TMSB4X) is measured in the demo
    assert 0.5 < fractions["spread"]["cell_type"]["k562"] < 2.0
    assert set(fractions["shift"]) <= {"k562", "A172", "T98G", "U87MG"}
