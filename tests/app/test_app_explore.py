"""The Perturbations and Activation views with a trained demo run."""

import json

import pytest
from app_helpers import goto, plotly_specs, texts, values, with_run, without_run

from departures_core import registry


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("page", ["perturbations", "activation"])
def test_views_without_a_run_say_what_to_do(app, page):
    at = goto(without_run(app()), page)
    _no_exception(at)
    assert not at.error
    assert "Pick a trained run" in texts(at.info)


def test_view_of_a_run_without_a_model_yet(app, runs_dir):
    (runs_dir / "starting").mkdir()
    (runs_dir / "starting" / registry.LAUNCH_FILE).write_text("{}")  # launched, no model yet
    at = app()
    at.sidebar.selectbox[0].set_value(str(runs_dir / "starting")).run()
    at = goto(at, "perturbations")
    _no_exception(at)
    assert "no saved model yet" in texts(at.info)


def test_perturbations_view(app, trained, runs_dir):
    at = goto(with_run(app, trained[0], runs_dir), "perturbations")
    _no_exception(at)
    picked = at.multiselect[0].value
    assert len(picked) == 1
    assert "held out" in at.multiselect[0].format_func(picked[0])  # held-out ones first
    umap = json.loads(plotly_specs(at)[0])
    names = [t["name"] for t in umap["data"]]
    assert names[0].startswith("control (")
    n_pred = int(at.number_input[0].value)
    assert names[2] == f"{picked[0]} · predicted ({n_pred})"
    assert len(values(umap["data"][2]["x"])) == n_pred
    scores = at.dataframe[0].value
    assert scores["method"].tolist() == ["departures", "control", "mean_shift"]
    assert (scores["e_distance"] > 0).all()
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[:2] == ["Cells (.h5ad)", "Metrics (CSV)"] and len(labels) == 5

    # a second perturbation: both on the map and in the table; a gene's violin
    options = [o.split(" ")[0] for o in at.multiselect[0].options]  # labels -> names
    other = next(o for o in options if o not in picked)
    at.multiselect[0].set_value([*picked, other]).run()
    _no_exception(at)
    names = [t["name"] for t in json.loads(plotly_specs(at)[0])["data"]]
    assert len(names) == 5 and any(n.startswith(f"{other} · predicted") for n in names)
    assert len(at.dataframe[0].value) == 6
    gene_box = next(s for s in at.selectbox if s.label == "Gene")
    gene = gene_box.options[3]
    gene_box.set_value(gene).run()
    _no_exception(at)
    violin = json.loads(plotly_specs(at)[-1])
    assert [t["type"] for t in violin["data"]] == ["violin"] * 3
    assert violin["layout"]["title"]["text"].startswith(gene)


def test_activation_view(app, trained, runs_dir):
    at = goto(with_run(app, trained[0], runs_dir), "activation")
    _no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert -1 <= float(metrics["Activation PCC"]) <= 1
    specs = [json.loads(s) for s in plotly_specs(at)]
    assert specs[0]["layout"]["xaxis"]["title"]["text"] == "observed"
    heat = specs[1]
    assert [t["type"] for t in heat["data"]] == ["heatmap", "heatmap"]
    n_rows = len(at.multiselect[0].value)
    assert len(heat["data"][0]["y"]) == n_rows >= 1
    # a lower threshold finds at least as many switching genes
    before = metrics["Genes switched"]
    at.slider[0].set_value(0.05).run()
    _no_exception(at)
    after = {m.label: m.value for m in at.metric}["Genes switched"]
    count = lambda s: sum(int(p.split()[0]) for p in s.split("·"))  # noqa: E731
    assert count(after) >= count(before)
