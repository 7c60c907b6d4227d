"""The OT couplings page: plan heatmaps and pair lines for OT and random pairing, live controls."""

import json

import numpy as np
from app_helpers import goto, plotly_specs, texts, values, with_run, without_run

from app import run_state
from departures_core import couplings
from departures_core.errors import ConfigError


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _figures(at) -> list[dict]:
    return [json.loads(s) for s in plotly_specs(at)]


def _matrix(z) -> np.ndarray:
    """A plotly 2-D array, typed (``{"dtype", "bdata", "shape"}``) or nested lists."""
    if isinstance(z, dict):
        shape = tuple(int(n) for n in str(z["shape"]).split(","))
        return np.array(values(z), dtype=float).reshape(shape)
    return np.array(z, dtype=float)


def _metric(at, label: str) -> float:
    return float(next(m for m in at.metric if m.label == label).value)


def test_page_without_a_run_says_what_to_do(app):
    at = goto(without_run(app()), "couplings")
    assert not at.exception and not at.error
    assert "Pick a trained run" in texts(at.info)
    assert not plotly_specs(at)


def test_page_draws_plans_and_pairs_and_follows_the_controls(app, trained, runs_dir):
    at = goto(with_run(app, trained[0], runs_dir), "couplings")
    _no_exception(at)
    heat_ot, heat_rand, lines_ot, lines_rand = _figures(at)
    for fig in (heat_ot, heat_rand):
        assert [t["type"] for t in fig["data"]] == ["heatmap"]
        z = _matrix(fig["data"][0]["z"])
        assert z.ndim == 2 and np.isfinite(z).all() and z.min() >= 0
        assert "PC 1" in fig["layout"]["yaxis"]["title"]["text"]
    assert heat_ot["layout"]["title"]["text"].startswith("OT plan · ε = 0.1, euclidean")
    assert heat_rand["layout"]["title"]["text"].startswith("Random pairing")
    for fig in (lines_ot, lines_rand):
        names = [t["name"] for t in fig["data"]]
        assert names[0] == "other cells" and names[1].startswith("pairs (")
        assert names[2].startswith("control (")
        weights = values(fig["data"][1]["customdata"])[::3]
        assert weights == sorted(weights, reverse=True)  # heaviest first
    assert [d.label for d in at.get("download_button")][:2] == [
        "Plan summary (CSV)",
        "OT pairs, heaviest first (CSV)",
    ]
    summary = at.dataframe[0].value
    assert summary["mean_cost"].iloc[0] < summary["mean_cost"].iloc[1]  # OT beats random

    ratio = _metric(at, "Entropy / uniform coupling")
    at.select_slider(key="couplings-eps").set_value(0.01).run()
    _no_exception(at)
    assert _metric(at, "Entropy / uniform coupling") < ratio
    assert "ε = 0.01" in _figures(at)[0]["layout"]["title"]["text"]

    at.radio(key="couplings-cost").set_value("cosine").run()
    at.select_slider(key="couplings-batch").set_value(16).run()
    _no_exception(at)
    heat_ot = _figures(at)[0]
    assert "cosine · 16×16" in heat_ot["layout"]["title"]["text"]
    assert _matrix(heat_ot["data"][0]["z"]).shape == (16, 16)
    assert set(at.dataframe[0].value["cost"]) == {"cosine"}


def test_page_reports_a_failed_coupling_as_an_error(app, trained, runs_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise ConfigError("ε = 0.001 is too small for these cells: Sinkhorn underflowed.")

    monkeypatch.setattr(couplings, "condition_coupling", fail)
    run_state._coupling.clear()  # a coupling cached by another test would hide the failure
    at = goto(with_run(app, trained[0], runs_dir), "couplings")
    assert not at.exception
    assert "Sinkhorn underflowed" in texts(at.error)
    assert not plotly_specs(at)
