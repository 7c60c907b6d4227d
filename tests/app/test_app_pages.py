"""Every page renders without an exception: with no data, with the demo, and with a run."""

import json
import shutil

import pytest
from app_helpers import PAGES, goto, plotly_specs, texts, values, without_run

from departures_core import demo, io, launch, registry


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_without_data(app, page):
    at = goto(app(), page)
    _no_exception(at)
    assert not at.error
    assert "CPU" in texts(at.sidebar.caption) or "GPU" in texts(at.sidebar.caption)


def test_a_fresh_start_opens_on_the_demo_and_its_shipped_run(app, runs_dir, trained):
    at = app()
    _no_exception(at)
    assert "Departures Explorer" in texts(at.title)
    assert "Demo: PerturBench" in texts(at.sidebar.caption).replace("\\", "")
    assert "5,961 cells" in texts(at.sidebar.caption)
    assert (runs_dir / demo.DEMO_RUN_NAME / "model.pt").exists()
    assert at.sidebar.selectbox[0].value == str(runs_dir / demo.DEMO_RUN_NAME)
    assert "opened for you" in texts(at.sidebar.caption)
    # picking a run by hand: the note goes
    shutil.copytree(trained[0], runs_dir / "mine")
    at.run().sidebar.selectbox[0].set_value(str(runs_dir / "mine")).run()
    assert at.sidebar.selectbox[0].value == str(runs_dir / "mine")
    assert "opened for you" not in texts(at.sidebar.caption)


def test_the_latest_finished_run_is_opened_when_none_is_chosen(app, runs_dir, trained):

    shutil.copytree(trained[0], runs_dir / "older")
    shutil.copytree(trained[0], runs_dir / "newer")
    (runs_dir / "newer" / "progress.json").touch()  # changed last
    at = app()
    assert at.sidebar.selectbox[0].value == str(runs_dir / "newer")
    assert not (runs_dir / demo.DEMO_RUN_NAME).exists()  # the user's runs: no demo added


def test_a_run_of_another_dataset_says_which_one_it_shows(app, runs_dir, trained):
    """The sidebar's dataset is the session's; a run trained on another one says so, since
    its pages show the run's own cells."""
    from app import state

    for name, dataset in (("theirs", "kang_pbmc.h5ad"), ("ours", next(iter(state.bundled())))):
        shutil.copytree(trained[0], runs_dir / name)
        info = {"dataset": dataset, "returncode": 0, "started": 0}
        (runs_dir / name / registry.LAUNCH_FILE).write_text(json.dumps(info))
    at = app()
    at.sidebar.selectbox[0].set_value(str(runs_dir / "theirs")).run()
    _no_exception(at)
    shown = texts(at.sidebar.caption).replace("\\", "")
    assert "Demo: PerturBench" in shown  # the session's dataset
    assert "Trained on kang_pbmc.h5ad: its pages show that dataset's cells." in shown
    at.sidebar.selectbox[0].set_value(str(runs_dir / "ours")).run()
    assert "Trained on" not in texts(at.sidebar.caption)


def test_empty_pages_say_what_to_do(app):
    at = without_run(app(), data=False)
    assert "Departures Explorer" in texts(at.title)
    assert "Load the bundled demo" in texts(goto(at, "data").info)
    assert "Data page first" in texts(goto(at, "train").info)


def _with_demo(app):
    at = app()
    next(b for b in at.button if b.label == "Load the demo dataset").click().run()
    _no_exception(at)
    return at


def test_demo_button_opens_data_page_with_umap(app):
    at = _with_demo(app)
    assert "PerturBench" in texts(at.subheader)
    assert "Ready to train" in texts(at.success)
    assert [m.value for m in at.metric][:2] == ["5,961", "500"]
    umap = json.loads(plotly_specs(at)[0])
    assert "UMAP of 5,961 cells" in umap["layout"]["title"]["text"]
    assert sum(len(values(t["x"])) for t in umap["data"]) == 5961
    assert umap["data"][0]["name"].startswith("control")  # controls first, in grey
    assert "5,961 cells" in texts(at.sidebar.caption)


def test_data_page_colours_by_cell_type_and_gene(app):
    at = _with_demo(app)
    at.radio[0].set_value("cell type").run()
    names = [t["name"] for t in json.loads(plotly_specs(at)[0])["data"]]
    assert names == ["A172 (850)", "T98G (871)", "U87MG (865)", "k562 (3,375)"]
    at.radio[0].set_value("gene").run()
    gene_box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    assert gene_box.value != "PERM1"  # the most variable gene, not the first (all zeros)
    gene_box.set_value("TMSB4X").run()
    _no_exception(at)
    spec = json.loads(plotly_specs(at)[0])
    assert spec["data"][0]["marker"]["colorbar"]["title"]["text"] == "TMSB4X"


def test_data_page_counts_table_and_key_errors(app):
    at = _with_demo(app)
    table = at.dataframe[0].value
    assert table.index[0] == "control" and int(table.loc["SGK1", "total"]) == 400
    assert set(table.columns) == {"total", "A172", "T98G", "U87MG", "k562"}
    # a wrong column is a user error with its fix, not a traceback
    next(s for s in at.selectbox if s.label == "Perturbation column").set_value("treatment").run()
    _no_exception(at)
    assert "Every cell is a control" in texts(at.error)
    assert not at.success


def test_train_page_with_demo_has_defaults_and_launches(app, monkeypatch, runs_dir):
    at = goto(_with_demo(app), "train")
    _no_exception(at)
    holdout = at.multiselect[0].value
    assert len(holdout) == round(0.25 * 33)
    assert at.text_input[0].value.startswith("demo-")
    assert "CPU" in texts(at.caption) or "GPU" in texts(at.caption)
    launched = {}

    def fake_launch(root, name, config, data_path, **kw):
        launched.update(name=name, config=config, data=data_path)
        path = registry.run_path(root, name)
        path.mkdir()
        return path

    monkeypatch.setattr(launch, "launch", fake_launch)
    at.text_input[0].set_value("../../my run").run()
    next(b for b in at.button if b.label == "Start training").click().run()
    _no_exception(at)
    cfg = launched["config"]
    assert cfg.data.holdout == tuple(sorted(holdout))
    assert cfg.data.perturbation_key == "condition" and cfg.data.cell_type_key == "cell_type"
    assert launched["data"] == str(io.DEMO_PATH)
    assert at.session_state["run"] == str(runs_dir / "my-run")


def test_pages_with_a_trained_run(app, trained, runs_dir):
    shutil.copytree(trained[0], runs_dir / "tiny")
    at = app()
    assert at.dataframe[0].value["run"].tolist() == ["tiny"]
    assert at.dataframe[0].value["state"].tolist() == ["finished"]
    run_box = at.sidebar.selectbox[0]
    run_box.set_value(str(runs_dir / "tiny")).run()
    for page in PAGES:
        at = goto(at, page)
        _no_exception(at)
    progress = at.get("progress")[0]
    assert "Finished" in progress.proto.text and progress.proto.value == 100
    loss = json.loads(plotly_specs(at)[0])
    assert {t["name"] for t in loss["data"]} >= {"loss_cont (per step)", "loss_disc (per step)"}
    assert any(b.label == "Train more epochs" for b in at.button)


def test_open_run_folder_by_path(app, trained, tmp_path):
    elsewhere = tmp_path / "from-a-gpu-server"
    shutil.copytree(trained[0], elsewhere, ignore=shutil.ignore_patterns("progress.json"))
    at = app()
    at.text_input[0].set_value(str(tmp_path / "nothing-here"))
    next(b for b in at.button if b.label == "Open folder").click().run()
    assert "is not a folder" in texts(at.error)
    at.text_input[0].set_value(str(elsewhere))
    next(b for b in at.button if b.label == "Open folder").click().run()
    _no_exception(at)
    assert at.session_state["run"] == str(elsewhere)
    assert registry.status(elsewhere).state == "finished"
    at = goto(at, "train")
    _no_exception(at)
    assert "Finished" in at.get("progress")[0].proto.text
