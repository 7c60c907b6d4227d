"""Run folders: safe names, the CLI arguments a launch passes, status of every kind of
folder, and a real background run that is stopped and resumed."""

import json
import shutil
import time

import pytest

from departures_core import cli, io, keys, launch, registry
from departures_core.errors import DeparturesError


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("my run", "my-run"),
        ("../../etc/passwd", "etc-passwd"),
        ("a/b\\c", "a-b-c"),
        (".hidden", "hidden"),
        ("KLF1+MAP2K6 ε=0.1", "KLF1-MAP2K6-0.1"),
    ],
)
def test_run_names_cannot_leave_the_runs_folder(tmp_path, name, safe):
    assert registry.safe_name(name) == safe
    path = registry.run_path(tmp_path, name)
    assert path.parent == tmp_path.resolve() and path.name == safe


@pytest.mark.parametrize("name", ["", "..", "/", "  ", "***"])
def test_unusable_names_are_user_errors(tmp_path, name):
    with pytest.raises(DeparturesError, match="not usable as a name"):
        registry.run_path(tmp_path, name)


def test_train_args_reproduce_the_config_through_the_cli(demo):
    obs_keys = io.ObsKeys("condition", "control", "cell_type")
    config = launch.make_config(
        obs_keys,
        holdout=["FOXO4", "KLF1+MAP2K6"],
        n_genes=300,
        epochs=7,
        batch_size=64,
        lr=3e-4,
        epsilon=0.05,
        cost="cosine",
        pairing="random",
        discrete=False,
        seed=3,
        device="cpu",
    )
    args = cli._parser().parse_args(["train", *launch.train_args(config), "--out", "x"])
    assert cli._config(args, demo) == config
    none_held = launch.make_config(obs_keys, holdout=[])
    args = cli._parser().parse_args(["train", *launch.train_args(none_held), "--out", "x"])
    assert cli._config(args, demo).data.holdout_fraction == 0.0


def test_status_of_folders_made_elsewhere_or_broken(tmp_path, trained):
    copied = tmp_path / "copied"
    shutil.copytree(trained[0], copied, ignore=shutil.ignore_patterns(keys.PROGRESS_FILE))
    st = registry.status(copied)
    assert st.state == "finished" and st.step == len(trained[1])
    assert st.epoch == trained[1][-1]["epoch"]
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / registry.LOG_FILE).write_text("$ python ...\nerror: X contains 3 NaN values.\n")
    (crashed / registry.LAUNCH_FILE).write_text(json.dumps({"pid": 999_999_999, "started": 0}))
    st = registry.status(crashed)
    assert st.state == "failed" and st.error == "X contains 3 NaN values."
    (crashed / keys.STOP_FILE).touch()
    assert registry.status(crashed).state == "cancelled"
    runs = registry.list_runs(tmp_path)
    assert sorted(r.name for r in runs) == ["copied", "crashed"]
    with pytest.raises(DeparturesError, match="not a run folder"):
        registry.check_run_folder(tmp_path)


def _wait_for(run_dir, predicate, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = registry.status(run_dir)
        if predicate(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {st}; log:\n{registry.log_tail(run_dir)}")


def test_background_run_stops_and_resumes(tmp_path):
    config = launch.make_config(
        io.DEMO_KEYS, holdout=["FOXO4"], n_genes=500, epochs=3, batch_size=256, device="cpu"
    )
    run_dir = launch.launch(tmp_path, "bg run", config, io.DEMO_PATH, dataset="demo")
    assert run_dir == tmp_path.resolve() / "bg-run"
    with pytest.raises(DeparturesError, match="exists already"):
        launch.launch(tmp_path, "bg run", config, io.DEMO_PATH)
    assert registry.status(run_dir).state in ("starting", "running")
    st = _wait_for(run_dir, lambda s: s.state == "running" and s.step >= 2)
    assert st.total > st.step and st.device == "cpu"
    launch.stop(run_dir)
    st = launch.wait(run_dir, timeout=60)
    assert st.state == "stopped" and registry.is_run(run_dir) and st.step < st.total
    launch.resume(run_dir, epochs=1)
    # a finished run also fits its non-responder fractions (it samples every training condition)
    st = _wait_for(run_dir, lambda s: not s.active, timeout=300)
    assert st.state == "finished", registry.log_tail(run_dir)
    assert registry.history(run_dir)["step"].iloc[-1] == st.step
    assert json.loads((run_dir / "split.json").read_text())["holdout"] == ["FOXO4"]
