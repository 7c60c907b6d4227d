"""Links for talks: each exploration view opens on the run and condition its URL names,
writes its state back into the URL, and says what is wrong with a bad link — never an
exception. The views draw on the shipped demo run (AppTest); the browser test in
test_app_browser.py opens real links on a fresh server."""

import shutil

import pytest
from app_helpers import HOME, plotly_specs, texts
from streamlit.testing.v1 import AppTest

from departures_core import demo

CONDITION = {"run": "demo", "perturbation": "KLF1", "cell_type": "k562"}
LINKS = {  # a view, and a link to it that changes everything a first visit would show
    "perturbations": {**CONDITION, "perturbation": ["KLF1", "KLF1+MAP2K6"]},
    "couplings": CONDITION,
    "trajectories": {**CONDITION, "colour": "onoff", "gene": "HBG2", "presentation": "1"},
    "activation": {**CONDITION, "perturbation": "MAPK1", "cell_type": "A172"},
}
FEW_CELLS = {"traj-cells": 12, "act-cells": 20}  # keep the predictions small


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder shared by this module's tests (so are the run caches): the demo run,
    and a copy changed later, ``newer``, which a new session opens by itself."""
    path = tmp_path_factory.mktemp("links") / "runs"
    demo.install(path)
    shutil.copytree(path / "demo", path / "newer")
    (path / "newer" / "progress.json").touch()
    return path


@pytest.fixture
def open_link(runs, monkeypatch):
    """A factory: a new session opened on ``/<page>?<query>``, as a browser would."""
    monkeypatch.setenv("DEPARTURES_RUNS_DIR", str(runs))

    def make(page: str, query: dict) -> AppTest:
        at = AppTest.from_file(str(HOME), default_timeout=180)
        at.query_params.update(query)
        for key, value in FEW_CELLS.items():
            at.session_state[key] = value
        return at.switch_page(f"../pages/{page}.py").run()

    return make


def _ok(at, *, errors: int = 0) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == errors, [e.value for e in at.error]


def _picked(at) -> tuple[str, list[str]]:
    """The view's cell type and perturbation(s), as its picker shows them."""
    cell_type = next(s.value for s in at.selectbox if s.label == "Cell type")
    many = [m.value for m in at.multiselect if m.label == "Perturbations"]
    if many:
        return cell_type, list(many[0])
    return cell_type, [next(s.value for s in at.selectbox if s.label == "Perturbation")]


def _as_lists(query: dict) -> dict:
    return {k: v if isinstance(v, list) else [v] for k, v in query.items()}


@pytest.mark.parametrize("page", LINKS)
def test_a_link_opens_the_view_on_its_run_and_condition(open_link, runs, page):
    link = LINKS[page]
    at = open_link(page, link)
    _ok(at)
    assert at.sidebar.selectbox[0].value == str(runs / "demo")  # not the newer run
    assert "opened for you" not in texts(at.sidebar.caption)
    perts = _as_lists(link)["perturbation"]
    assert _picked(at) == (link["cell_type"], perts)
    assert any(perts[-1] in s for s in plotly_specs(at))  # drawn
    assert _as_lists(at.query_params) == _as_lists(link)  # the URL keeps the link
    (shown,) = [c.value for c in at.code]  # the "Copy link to this view" popover
    assert shown.startswith(f"/{page}?run=demo&perturbation=")
    assert "KLF1%2BMAP2K6" in shown if page == "perturbations" else "+" not in shown
    # followed once: the widgets lead afterwards, and write the URL
    if page == "trajectories":
        assert at.toggle(key="traj-present").value
        assert at.radio(key="traj-mode").value == "gene on/off"
        assert next(s for s in at.selectbox if s.label.startswith("Gene")).value == "HBG2"
        at.toggle(key="traj-present").set_value(False).run()
        at.radio(key="traj-mode").set_value("time").run()
        _ok(at)
        assert at.radio(key="traj-mode").value == "time"
        assert _as_lists(at.query_params) == _as_lists({**CONDITION, "colour": "time"})


def test_the_widgets_write_the_view_into_the_url(open_link, runs):
    at = open_link("activation", LINKS["activation"])
    at.selectbox(key="activation-pert-A172").set_value("SGK1").run()
    _ok(at)
    assert _picked(at) == ("A172", ["SGK1"])
    assert at.query_params["perturbation"] == "SGK1"
    at.selectbox(key="activation-cell-type").set_value("T98G").run()
    _ok(at)
    assert _picked(at) == ("T98G", ["SGK1"])
    assert (at.query_params["cell_type"], at.query_params["perturbation"]) == ("T98G", "SGK1")
    at.sidebar.selectbox[0].set_value(str(runs / "newer")).run()
    _ok(at)
    assert at.query_params["run"] == "newer"
    assert "/activation?run=newer&perturbation=" in at.code[0].value


def test_a_bad_link_says_what_is_wrong_and_the_view_still_draws(open_link, runs):
    at = open_link("activation", {"run": "nope", "cell_type": "nowhere", "perturbation": "KLF9"})
    _ok(at, errors=3)
    run, cell_type, pert = (e.value for e in at.error)
    assert "`run` to `nope`, which is not a run in the runs folder" in run
    assert "`demo`" in run and "`newer`" in run  # what there is
    assert "`nowhere`, which is not a cell type of run `newer`" in cell_type
    assert "`k562`" in cell_type
    assert "`KLF9`, which is not a perturbation of run `newer` in `k562`" in pert
    assert "`KLF1+MAP2K6`" in pert and "(33 in all)" in pert
    at.query_params.update(perturbation="KLF1", cell_type="A172")  # another link arrives
    at.run()
    _ok(at, errors=1)
    assert "not a perturbation of run `newer` in `A172` (it has it in `k562`)" in at.error[0].value
    assert at.sidebar.selectbox[0].value == str(runs / "newer")  # what it showed anyway
    assert plotly_specs(at)
    assert at.query_params["run"] == "newer"  # the URL now says what is shown


def test_a_link_never_opens_a_path(open_link, runs):
    at = open_link("activation", {})
    for name in ("../demo", str(runs / "demo"), "/", "."):  # each a link that arrives
        at.query_params["run"] = name
        at.run()
        _ok(at, errors=1)
        assert "which is not a run in the runs folder" in at.error[0].value
        assert at.sidebar.selectbox[0].value == str(runs / "newer")


def test_a_typed_plus_and_several_perturbations_on_a_one_perturbation_view(open_link):
    # "KLF1+MAP2K6" typed into a URL arrives as "KLF1 MAP2K6"; Activation shows one
    at = open_link("activation", {"perturbation": ["KLF1 MAP2K6", "KLF1"]})
    _ok(at)
    assert _picked(at) == ("k562", ["KLF1+MAP2K6"])
    assert "the link's first" in texts(at.info)


def test_bad_trajectories_values_get_a_message(open_link):
    at = open_link("trajectories", {**CONDITION, "colour": "rainbow", "presentation": "yes"})
    _ok(at, errors=2)
    presentation, colour = (e.value for e in at.error)
    assert "`colour` to `rainbow`, which is not a colouring of this view" in colour
    assert "`time`, `expression`, `onoff`" in colour
    assert "`presentation` to `yes`" in presentation and "`1`, `0`" in presentation
    assert at.radio(key="traj-mode").value == "time" and not at.toggle(key="traj-present").value
    at.query_params.update(colour="expression", gene="NOTAGENE")
    at.run()
    _ok(at, errors=1)
    assert "`gene` to `NOTAGENE`, which is not a gene of this run" in at.error[0].value
    assert at.radio(key="traj-mode").value == "gene expression"


# In a real browser: test_app_browser.py, test_a_fresh_start_draws_every_view_and_a_restart_...
