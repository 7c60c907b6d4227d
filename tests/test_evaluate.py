"""Evaluation: long-format metrics, baselines, ablation configs, the model's sample sizes.
The `evaluate` command and quality on real data are tested in tests/test_calibration.py."""

import anndata as ad
import numpy as np
import pandas as pd

from departures_core import evaluate, metrics, runs
from departures_core.config import DataConfig, RunConfig
from departures_core.data import populations


def _synthetic(n_small: int = 30) -> ad.AnnData:
    """Two cell types; P raises gene 0 by 2 in A and by 3 in B; Q may be rare; R does nothing."""
    rng = np.random.default_rng(0)
    rows, obs = [], []
    for ct, shift in (("A", 2.0), ("B", 3.0)):
        for label, n in (("ctrl", 40), ("P", 40), ("Q", n_small), ("R", 40)):
            x = rng.gamma(2.0, 0.5, size=(n, 5))
            if label == "P":
                x[:, 0] += shift
            rows.append(x)
            obs += [(label, ct)] * n
    obs = pd.DataFrame(obs, columns=["pert", "ct"])
    obs.index = obs.index.astype(str)
    return ad.AnnData(
        np.vstack(rows).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )


def test_mean_shift_uses_the_perturbations_own_shift_when_seen():
    cfg = DataConfig(
        perturbation_key="pert", control="ctrl", cell_type_key="ct", holdout_cell_types=("B",)
    )
    data = populations(_synthetic(), cfg, seed=0)
    cond = data.find("P", "B")
    assert cond.held_out
    pred = evaluate.mean_shift_predictor(data)(cond)
    train_a = data.find("P", "A")
    own = data.x[train_a.perturbed].mean(0) - data.x[train_a.control].mean(0)
    np.testing.assert_allclose(pred, data.x[cond.control] + own, rtol=1e-5)
    assert own[0] > 1.5  # the shift of A, not the average over P and Q


def test_mean_shift_falls_back_to_the_mean_training_shift():
    cfg = DataConfig(perturbation_key="pert", control="ctrl", cell_type_key="ct", holdout=("P",))
    data = populations(_synthetic(), cfg, seed=0)
    cond = data.find("P", "A")
    shifts = [
        data.x[c.perturbed].mean(0) - data.x[c.control].mean(0)
        for c in (data.find("Q", "A"), data.find("R", "A"))
    ]
    pred = evaluate.mean_shift_predictor(data)(cond)
    np.testing.assert_allclose(pred, data.x[cond.control] + np.mean(shifts, 0), rtol=1e-5)


def test_small_conditions_are_skipped_and_listed():
    cfg = DataConfig(
        perturbation_key="pert", control="ctrl", cell_type_key="ct", holdout=("P", "Q")
    )
    data = populations(_synthetic(n_small=6), cfg, seed=0)
    ev = evaluate.evaluate(data, {"control": lambda c: data.x[c.control]}, progress=False)
    assert {(s["perturbation"], s["cell_type"]) for s in ev.skipped} == {("Q", "A"), ("Q", "B")}
    assert set(ev.metrics["perturbation"]) == {"P"}
    assert list(ev.metrics.columns) == list(evaluate.COLUMNS)


def test_ablation_config_pins_the_split_and_flips_one_switch():
    split = runs.Split(("A",), ("B", "C"), ())
    base = RunConfig(data=DataConfig(holdout_fraction=0.25))
    rp = evaluate.ablation_config(base, "random_pairing", split)
    nd = evaluate.ablation_config(base, "no_discrete", split)
    assert rp.ot.pairing == "random" and rp.bridge.discrete
    assert nd.bridge.discrete is False and nd.ot.pairing == "ot"
    assert rp.data.holdout == ("B", "C") and rp.data.holdout_fraction == 0.0


def test_evaluate_run_scores_every_heldout_condition(run):
    ev = evaluate.evaluate_run(run, steps=5, progress=False)
    baselines = {"control", "mean_shift", "pooled_perturbed", "additive", "linear", "nearest"}
    assert set(ev.metrics["method"]) == {"departures", evaluate.NOISE_FLOOR} | baselines
    test = ev.metrics[ev.metrics["split"] == evaluate.TEST]
    scored = {
        (c.perturbation, c.cell_type)
        for c in run.data.heldout_conditions()
        if len(c.perturbed) >= evaluate.MIN_CELLS
    }
    got = set(zip(test["perturbation"], test["cell_type"], strict=True))
    assert got == scored
    per_control = test[(test["cells"] == evaluate.PER_CONTROL) & (test["method"] != "noise_floor")]
    per = per_control.groupby(["method", "perturbation", "cell_type"])["metric"].nunique()
    assert (per == len(metrics.METRIC_NAMES)).all()
    # the model is also scored on 200 predicted cells; the baselines at their own size
    fixed = test[test["cells"] == str(evaluate.N_FIXED)]
    assert set(fixed["method"]) == {"departures"}
    # the validation conditions are scored apart, never mixed into the reported numbers
    validation = ev.metrics[ev.metrics["split"] == evaluate.VALIDATION]
    assert set(validation["perturbation"]) == set(run.model.split.validation)
    assert not set(validation["perturbation"]) & set(test["perturbation"])
    assert set(ev.settings) == {"linear", "nearest", "knowledge"}
    assert ev.settings["knowledge"]["unknown"] == ["IER5L"]  # no GO annotation in the table
    summary = ev.summary()
    assert summary["control"]["e_distance"]["median"] > 0
    # The control baseline's activation PCC with itself as a prediction is high but not 1.
    assert 0 < summary["control"]["activation_pcc"]["median"] < 1


def test_the_model_is_scored_on_its_control_cells_and_its_mean_on_more(run):
    """Distances compare one predicted cell per control cell (the controls' sample size);
    a condition with fewer controls than MEAN_CELLS also gets a larger sample for the means,
    every control cell starting equally many of its cells."""
    cond = run.data.heldout_conditions()[0]
    n = len(cond.control)
    assert evaluate.start_rows(cond.control, n - 1).tolist() == list(cond.control)
    rows = evaluate.start_rows(cond.control, 3 * n + 1)
    assert rows[:n].tolist() == list(cond.control)
    assert sorted(np.unique(rows, return_counts=True)[1].tolist()) == [3] * (n - 1) + [4]
    out = evaluate.model_predictor(run, steps=3, mean_cells=2 * n)(cond)
    assert isinstance(out, evaluate.Predicted)
    assert out.cells.shape == (n, run.data.x.shape[1])
    assert out.more.shape == (2 * n, run.data.x.shape[1])
    alone = evaluate.model_predictor(run, steps=3, mean_cells=0)(cond)
    np.testing.assert_array_equal(alone, out.cells)  # the same seed, the same cells


def test_a_users_gene_graph_replaces_the_go_table_for_the_baselines(tmp_path):
    """``evaluate --knowledge FILE``: the nearest baseline follows the user's edges, and
    the genes the file does not know are named."""
    cfg = DataConfig(perturbation_key="pert", control="ctrl", cell_type_key="ct", holdout=("Q",))
    data = populations(_synthetic(), cfg, seed=0)
    graph = tmp_path / "graph.csv"
    graph.write_text("gene_a,gene_b,weight\nQ,P,1.0\n")
    predictors, settings = evaluate.baseline_predictors(data, knowledge=graph)
    assert settings["knowledge"]["source"].endswith("graph.csv")
    assert settings["knowledge"]["unknown"] == ["R"]
    nearest = evaluate.baseline_predictors(data, knowledge=graph)[0]["nearest"]
    cond = data.find("Q", "A")
    weights = dict(zip(*nearest.weights(cond), strict=True))
    assert weights["P"] > weights["R"]  # Q's only neighbour in the graph
