"""cell-eval (the Virtual Cell Challenge's metrics) on the held-out conditions of the demo."""

import sys

import numpy as np
import pandas as pd
import pytest

from departures_core import celleval, cli, evaluate, runs
from departures_core.demo import DEMO_RUN

pytest.importorskip("cell_eval")


@pytest.fixture(scope="module")
def scored():
    """cell-eval of the observed cells themselves (a perfect prediction) and three baselines
    on the shipped demo run's held-out k562 conditions (one cell-eval context)."""
    run = runs.open_run(DEMO_RUN)
    data = run.data
    recorder = celleval.Recorder(
        {
            "observed": lambda cond: data.x[cond.perturbed],
            "control": lambda cond: data.x[cond.control],
            "mean_shift": evaluate.mean_shift_predictor(data),
            "pooled_perturbed": evaluate.pooled_perturbed_predictor(data),
        }
    )
    conds = [c for c in data.heldout_conditions() if c.cell_type == "k562"]
    for predict in recorder.predictors.values():
        for cond in conds:
            predict(cond)
    return data, conds, celleval.score(data, recorder)


def _wide(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    mine = frame[frame["method"] == method]
    return mine.pivot_table(index="perturbation", columns="metric", values="value", dropna=False)


def test_a_perfect_prediction_scores_the_best_values(scored):
    _, conds, frame = scored
    assert set(frame["metric"]) == {*celleval.METRICS, celleval.VCC_SCORE}
    perfect = _wide(frame, "observed")
    assert len(perfect) == len(conds) >= 2
    np.testing.assert_allclose(perfect["mae"], 0.0, atol=1e-7)
    np.testing.assert_allclose(perfect["discrimination_score_l1"], 1.0)
    np.testing.assert_allclose(perfect["pearson_delta"], 1.0, rtol=1e-6)
    # overlap is only defined by the real cells' significant DE genes: where a condition
    # has some (de_direction_match is then defined), the perfect prediction finds them all
    has_de = perfect["de_direction_match"].notna()
    assert has_de.sum() >= 2
    np.testing.assert_allclose(perfect.loc[has_de, "overlap_at_N"], 1.0)
    np.testing.assert_allclose(perfect.loc[has_de, "de_direction_match"], 1.0)
    for baseline in ("control", "mean_shift", "pooled_perturbed"):  # best in each direction
        other = _wide(frame, baseline)
        for metric, higher in celleval.HIGHER_IS_BETTER.items():
            ours, theirs = perfect[metric], other[metric]
            ok = ours >= theirs if higher else ours <= theirs
            assert (ok | theirs.isna()).all(), (baseline, metric)


def test_the_vcc_score_is_zero_for_control_and_highest_for_a_perfect_prediction(scored):
    _, _, frame = scored
    vcc = frame[frame["metric"] == celleval.VCC_SCORE].pivot_table(
        index="perturbation", columns="method", values="value"
    )
    np.testing.assert_allclose(vcc["control"], 0.0)
    assert (vcc["observed"] > 0).all()
    for baseline in ("mean_shift", "pooled_perturbed"):
        assert (vcc["observed"] >= vcc[baseline]).all()
    summary = celleval.vcc_summary(frame)
    assert summary["control"] == 0.0
    assert summary.idxmax() == "observed" and summary["observed"] > 0.5


def test_the_no_change_baseline_mae_is_the_mean_absolute_change(scored):
    """cell-eval's MAE of a prediction is that of its mean profile: for the controls, the mean
    absolute difference between the control and perturbed means."""
    data, conds, frame = scored
    control = _wide(frame, "control")
    for cond in conds:
        expected = np.abs(data.x.mean(cond.control) - data.x.mean(cond.perturbed)).mean()
        assert control.loc[cond.perturbation, "mae"] == pytest.approx(expected, rel=1e-4)
    assert control["pearson_delta"].isna().all()  # no change: the correlation is undefined


def test_missing_cell_eval_is_a_typed_error_with_the_pip_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "cell_eval", None)  # `import cell_eval` raises
    with pytest.raises(celleval.CellEvalMissingError, match="pip install cell-eval=="):
        celleval.require()
    argv = ["evaluate", str(DEMO_RUN), "--cell-eval", "--out", str(tmp_path / "eval")]
    assert cli.main(argv) == cli.USER_ERROR
    err = capsys.readouterr().err
    assert "pip install cell-eval" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_cli_evaluate_cell_eval_adds_the_vcc_metrics_to_metrics_csv(tmp_path, capsys):
    """On the shipped demo run (no training), few sampling steps. In this process: a second
    one would compile cell-eval's numba kernels again (~10 s); `python -m departures_core
    evaluate` itself is run by tests/test_evaluate.py."""
    out = tmp_path / "eval"
    argv = ["evaluate", str(DEMO_RUN), "--cell-eval", "--out", str(out), "--steps", "2"]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    frame = pd.read_csv(out / "metrics.csv")
    assert list(frame.columns) == list(evaluate.COLUMNS)
    methods = {"departures", "control", "mean_shift", "pooled_perturbed"}
    methods |= {"additive", "linear", "nearest"}
    conditions = set(zip(frame["perturbation"], frame["cell_type"], strict=True))
    for metric in (*celleval.METRICS, celleval.VCC_SCORE, "e_distance"):
        rows = frame[(frame["metric"] == metric) & (frame["method"] != "noise_floor")]
        assert set(rows["method"]) == methods, metric
        for method in methods:
            mine = rows[rows["method"] == method]
            assert set(zip(mine["perturbation"], mine["cell_type"], strict=True)) == conditions
    vcc = frame[frame["metric"] == celleval.VCC_SCORE]
    assert (vcc.loc[vcc["method"] == "control", "value"] == 0).all()
    assert vcc["value"].between(0, 1).all()
    assert "vcc_score" in printed.out and "VCC score" in printed.out
    # cell-eval's and pdex's progress bars are silenced (with their logs)
    assert "Iterating over perturbations" not in printed.err
    assert "differential expression" not in printed.err
