"""The Evaluation view: the shipped demo run's saved evaluation at first visit, its scatter
against the best baseline, the new format's toggles, and runs with no or a broken one."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from app_helpers import goto, plotly_specs, texts, values

from departures_core import demo, paths


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _scatter(at) -> dict:
    (spec,) = [s for s in map(json.loads, plotly_specs(at)) if "best" not in s.get("title", "")]
    return spec


def _copy_of_demo(runs_dir, name: str, metrics: pd.DataFrame | str | None):
    """A copy of the shipped demo run named ``name`` with ``metrics`` as its evaluation
    (a frame, raw text, or none at all)."""
    target = runs_dir / name
    shutil.copytree(paths.DEMO_RUN, target, ignore=shutil.ignore_patterns("eval"))
    if metrics is not None:
        (target / "eval").mkdir()
        path = target / "eval" / "metrics.csv"
        text = metrics if isinstance(metrics, str) else metrics.to_csv(index=False)
        path.write_text(text)
    (target / "progress.json").touch()  # the newest run: a new session opens it
    return target


def test_the_demo_runs_evaluation_at_first_visit(app, runs_dir):
    at = goto(app(), "evaluation")
    _ok(at)
    assert at.session_state["run"] == str(runs_dir / demo.DEMO_RUN_NAME)
    medians, wins, per_condition = (d.value for d in at.dataframe[:3])
    assert {"departures", "control", "mean_shift", "pooled_perturbed"} <= set(medians.index)
    assert medians.index[0] == "departures"
    assert "e_distance ↓" in medians.columns and "activation_pcc ↑" in medians.columns
    assert "[" in medians.loc["departures", "e_distance ↓"]  # "median [lo, hi]"
    assert {"control", "mean_shift", "pooled_perturbed"} <= set(wins.index)
    assert any(b.startswith("best (") for b in wins.index)
    assert "no noise floor" not in texts(at.caption)  # the shipped evaluation has one
    spec = _scatter(at)
    (diagonal,) = [t for t in spec["data"] if t["name"] == "y = x"]
    assert values(diagonal["x"]) == values(diagonal["y"]) and diagonal["mode"] == "lines"
    points = [t for t in spec["data"] if t["mode"] == "markers"]
    assert sum(len(values(t["x"])) for t in points) == len(per_condition) == 11
    assert "BPGM+SAMD1 in k562" in points[0]["text"]
    assert "lower is better" in spec["layout"]["yaxis"]["title"]["text"]
    assert per_condition["view"].str.startswith("perturbations?run=demo&perturbation=").all()
    assert "Every condition (60)" in [e.label for e in at.expander]  # calibration


def test_the_metric_picker_changes_the_scatter(app):
    at = goto(app(), "evaluation")
    before = _scatter(at)
    at.selectbox(key="eval-scatter-metric").set_value("activation_pcc").run()
    _ok(at)
    after = _scatter(at)
    assert "activation_pcc" in after["layout"]["title"]["text"]
    assert "higher is better" in after["layout"]["xaxis"]["title"]["text"]
    ys = [values(t["y"]) for t in after["data"] if t["mode"] == "markers"]
    assert ys != [values(t["y"]) for t in before["data"] if t["mode"] == "markers"]
    assert all(0.9 < y < 1 for y in np.concatenate(ys))  # fractions of active cells agree


def test_a_run_without_an_evaluation_says_how_to_make_one(app, runs_dir):
    run = _copy_of_demo(runs_dir, "fresh", None)
    at = goto(app(), "evaluation")
    assert at.session_state["run"] == str(run)
    _ok(at)
    assert "has no evaluation yet" in texts(at.info)
    assert f"python -m departures_core evaluate {run}" in [c.value for c in at.code]
    assert not at.dataframe


@pytest.mark.parametrize(
    "text, message",
    [("method,value\nx,1\n", "is not an evaluation"), ('a,"b\n', "cannot be read")],
)
def test_a_broken_metrics_file_is_an_error_with_its_fix(app, runs_dir, text, message):
    _copy_of_demo(runs_dir, "broken", text)
    at = goto(app(), "evaluation")
    assert not at.exception
    assert message in texts(at.error) and "evaluate" in texts(at.error)


def test_the_new_format_offers_its_splits_cell_counts_and_effect_sizes(app, runs_dir):
    old = pd.read_csv(paths.DEMO_RUN / "eval" / "metrics.csv")
    test = old.assign(split="test", cells="per_control")
    more = test[test["method"] == "departures"].assign(
        cells="200", value=lambda f: f["value"] * 0.5
    )
    validation = test.assign(split="validation", perturbation=lambda f: "v-" + f["perturbation"])
    control = test[(test["method"] == "control") & (test["metric"] == "e_distance")]
    noise = control.assign(method="noise_floor", value=[0.0, 10.0] * 5 + [0.0])
    frame = pd.concat([test, more, validation, noise], ignore_index=True)
    _copy_of_demo(runs_dir, "new", frame)
    at = goto(app(), "evaluation")
    _ok(at)
    assert at.radio(key="eval-split").options == ["test", "validation"]
    assert at.radio(key="eval-cells").options == ["per_control", "200"]
    assert at.radio(key="eval-effect").options == ["all", "clear", "small"]
    clear = at.radio(key="eval-effect").set_value("clear").run()
    _ok(clear)
    assert {"control", "mean_shift"} <= set(at.dataframe[1].value.index)
    spec = _scatter(at)
    assert {t["name"].split(" ")[0] for t in spec["data"]} == {"y", "clear", "small"}
    at.radio(key="eval-cells").set_value("200").run()
    _ok(at)
    assert "baselines: their own cells" in texts(at.caption)
    at.radio(key="eval-split").set_value("validation").run()
    _ok(at)
    assert at.dataframe[2].value["perturbation"].str.startswith("v-").all()


def test_the_evaluation_view_in_a_real_browser(tmp_path):
    """A fresh server draws the Evaluation view of the shipped demo run: its tables and its
    scatter, no exception box; the screenshot is left in ``tmp_path``."""
    from test_app_browser import ARGS, CHROMIUM, _require_browser, _settle, _streamlit

    sync_playwright = _require_browser()
    runs_dir = tmp_path / "runs"
    with _streamlit(tmp_path, runs_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/evaluation")
            page.get_by_role("heading", name="Evaluation").first.wait_for()
            page.locator('[data-testid="stDataFrame"]').first.wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            _settle(page, "the Evaluation view")
            page.wait_for_timeout(1_000)  # the data grids draw on a canvas after the script
            page.screenshot(path=str(tmp_path / "evaluation.png"))
            shown = page.inner_text("body")
            assert "Departures" in shown and "best baseline" in shown
            assert page.locator('[data-testid="stException"]').count() == 0
            assert "Traceback" not in shown
        finally:
            browser.close()
    assert (tmp_path / "evaluation.png").stat().st_size > 10_000
