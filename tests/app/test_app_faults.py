"""Faults as the app shows them: a training process that crashes, and run folders that are
corrupt or from an older version. Each is an error on the page, never a traceback, and
the other runs stay listed and usable."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from app_helpers import goto, texts

from departures_core import io, keys, launch, registry, runs

VIEWS = ("perturbations", "activation", "couplings", "trajectories")


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _select(at, run_dir: Path):
    at.sidebar.selectbox[0].set_value(str(run_dir)).run()
    _no_exception(at)
    return at


def test_a_crashed_training_process_shows_its_error_and_spares_other_runs(
    app, runs_dir, trained, demo, tmp_path
):
    good = shutil.copytree(trained[0], runs_dir / "good")
    before = {p.name: _digest(p) for p in good.iterdir() if p.is_file()}
    data = tmp_path / "k562.h5ad"
    keep = (demo.obs["cell_type"] == "k562").to_numpy()
    demo[keep].copy().write_h5ad(data)
    # a learning rate this large makes the loss NaN within a few steps, in the real process
    config = launch.make_config(
        io.DEMO_KEYS, holdout=["FOXO4"], n_genes=50, epochs=3, batch_size=64, lr=1e9, device="cpu"
    )
    crashed = launch.launch(runs_dir, "diverges", config, data, dataset="k562")
    st = launch.wait(crashed, timeout=180)
    assert st.state == "failed" and st.error.startswith("Training diverged"), st

    at = app()
    assert {"good (finished)", "diverges (failed)"} <= set(at.sidebar.selectbox[0].options)
    at = goto(_select(at, crashed), "train")
    _no_exception(at)
    shown = texts(at.error).replace("\\", "")  # the page escapes Markdown
    assert f"Training failed: {st.error}" in shown and "Lower the learning rate" in shown
    at = goto(_select(at, good), "train")
    _no_exception(at)
    assert not at.error
    assert {p.name: _digest(p) for p in good.iterdir() if p.is_file()} == before
    assert runs.open_run(good).epoch == trained[1][-1]["epoch"]


def _rewrite(path: Path, **changes) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.update(changes)
    torch.save(state, path)


BROKEN = {
    "truncated": (
        lambda d: (d / keys.MODEL_FILE).write_bytes((d / keys.MODEL_FILE).read_bytes()[:999]),
        "is corrupt",
    ),
    "older-version": (
        lambda d: _rewrite(d / keys.MODEL_FILE, format=0, library_version="0.0.1"),
        "version 0.0.1",
    ),
    "no-data": (lambda d: (d / keys.DATA_FILE).unlink(), "has no data.h5ad"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_corrupt_or_old_run_folders_are_reported_not_fatal(app, runs_dir, trained, name):
    shutil.copytree(trained[0], runs_dir / "good")
    broken = shutil.copytree(trained[0], runs_dir / name)
    breaker, expected = BROKEN[name]
    breaker(broken)
    (broken / keys.HISTORY_FILE).write_text("garbage\x00\n")  # the listing reads it
    at = app()
    _no_exception(at)
    assert {r.name for r in registry.list_runs(runs_dir)} == {"good", name}
    table = at.dataframe[0].value  # the runs table on Home
    assert sorted(table["run"]) == sorted(["good", name])
    assert "good (finished)" in at.sidebar.selectbox[0].options
    _select(at, broken)
    for view in VIEWS:
        at = goto(at, view)
        _no_exception(at)
        shown = texts(at.error).replace("\\", "")  # in case the page escapes Markdown
        assert expected in shown and str(broken) in shown, (view, shown)
    for page in ("home", "train"):  # the run's own panel and the runs table still draw
        _no_exception(goto(at, page))
