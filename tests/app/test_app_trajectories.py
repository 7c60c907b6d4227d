"""The Trajectories page with a trained demo run: the animation, colour modes, presentation
mode and the exports."""

import json

import numpy as np
from app_helpers import goto, plotly_specs, texts, values, with_run, without_run

N_CELLS = 12


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _figure(at) -> dict:
    specs = plotly_specs(at)
    assert len(specs) == 1
    return json.loads(specs[0])


def _colours(fig: dict) -> list[np.ndarray]:
    return [np.array(values(f["data"][0]["marker"]["color"]), float) for f in fig["frames"]]


def test_page_without_a_run_says_what_to_do(app):
    at = goto(without_run(app()), "trajectories")
    _no_exception(at)
    assert "Pick a trained run" in texts(at.info)
    assert not plotly_specs(at)


def test_trajectories_page(app, trained, runs_dir):
    at = with_run(app, trained[0], runs_dir)
    at.session_state["traj-cells"] = N_CELLS  # few cells: keep the test fast
    at = goto(at, "trajectories")
    _no_exception(at)
    assert not at.warning  # nothing capped
    fig = _figure(at)
    assert len(fig["frames"]) == 26  # every other time point of the 50-step sampler
    assert len(fig["layout"]["sliders"][0]["steps"]) == 26
    labels = [b["label"] for b in fig["layout"]["updatemenus"][0]["buttons"]]
    assert labels == ["▶ Play", "❚❚ Pause"]
    assert fig["data"][0]["name"].startswith("observed ")  # the target cloud, underneath
    for frame in fig["frames"]:
        assert len(values(frame["data"][0]["x"])) == N_CELLS
    assert all(np.ptp(c) == 0 for c in _colours(fig))  # coloured by time
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download HTML"]

    # colour by a gene: the largest observed change comes first
    at.radio(key="traj-mode").set_value("gene expression").run()
    _no_exception(at)
    gene_box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    fig = _figure(at)
    assert fig["data"][-1]["marker"]["colorbar"]["title"]["text"] == gene_box.value
    at.radio(key="traj-mode").set_value("gene on/off").run()
    _no_exception(at)
    assert all(set(np.unique(c)) <= {0.0, 1.0} for c in _colours(_figure(at)))

    # a GIF on request
    next(b for b in at.button if b.label == "Make a GIF").click().run()
    _no_exception(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download HTML", "Download GIF"]

    # presentation: controls folded away, a bigger figure, the same choices
    height = _figure(at)["layout"]["height"]
    at.toggle(key="traj-present").set_value(True).run()
    _no_exception(at)
    controls = next(e for e in at.main.expander if e.label == "Controls")
    assert not controls.proto.expanded
    for kind in ("selectbox", "number_input", "select_slider", "checkbox", "radio"):
        assert len(getattr(at.main, kind)) == len(getattr(controls, kind)) > 0, kind
    assert not at.main.button and not at.get("download_button")  # no exports on stage
    assert controls.number_input(key="traj-cells").value == N_CELLS
    fig = _figure(at)
    assert fig["layout"]["height"] > height
    assert all(set(np.unique(c)) <= {0.0, 1.0} for c in _colours(fig))
    at.toggle(key="traj-present").set_value(False).run()
    assert not [e for e in at.main.expander if e.label == "Controls"]
    assert at.radio(key="traj-mode").value == "gene on/off"
