"""Faults: SIGKILL at any moment (a checkpoint write included), crashes inside training,
corrupt or old run folders, and requests too large for memory."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from departures_core import cli, explore, io, keys, launch, registry, runs, train
from departures_core.config import DataConfig, TrainConfig
from departures_core.errors import ConfigError, RunError
from departures_core.model import load_checkpoint, remove_partial_writes

ROOT = Path(__file__).resolve().parent.parent
SLICE = ["control", "FOXO4", "HK2", "KLF1", "KMT2A"]  # 500 k562 cells: epochs of ~10 steps


def _slice(demo):
    keep = (demo.obs["cell_type"] == "k562") & demo.obs["condition"].isin(SLICE)
    return demo[keep.to_numpy()].copy()


@pytest.fixture(scope="module")
def slice_path(tmp_path_factory, demo) -> Path:
    path = tmp_path_factory.mktemp("slice") / "slice.h5ad"
    _slice(demo).write_h5ad(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _partials(folder: Path) -> list[Path]:
    """Temporary files of a run's own writes (the app's launch.json has its own)."""
    return sorted(p for name in runs.RUN_FILES for p in folder.glob(f".{name}.*.tmp"))


# ---------------------------------------------------------------- SIGKILL mid-write
# Forks a writer that saves a real checkpoint in a tight loop (epoch and a marker tensor
# counting up) and SIGKILLs it at seeded random moments, until three kills have landed
# mid-write (a temporary file left behind) or 40 rounds have passed.
WRITER = """
import os, random, signal, sys, time
from pathlib import Path
import torch
from departures_core.model import load_checkpoint, save_checkpoint

src, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
state = load_checkpoint(src)
rng = random.Random(seed)
partial = 0
for k in range(40):
    folder = out / f"round{k:02d}"
    folder.mkdir(parents=True)
    done = folder / "done.txt"
    pid = os.fork()
    if pid == 0:
        fd = os.open(done, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for i in range(1, 10**9):
            state["epoch"] = i
            state["marker"] = torch.full((4096,), float(i))
            save_checkpoint(folder / "model.pt", state)
            os.write(fd, f"{i}\\n".encode())
        os._exit(0)
    while not done.exists() or done.stat().st_size == 0:
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.2))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    partial += bool(list(folder.glob(".model.pt.*.tmp")))
    if partial >= 3:
        break
"""


def test_sigkill_during_checkpoint_writes_leaves_a_complete_checkpoint(tmp_path, trained):
    source = trained[0] / keys.MODEL_FILE
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(source), str(tmp_path), "7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    weights = load_checkpoint(source)["model"]
    folders = sorted(tmp_path.glob("round*"))
    killed_mid_write = [f for f in folders if _partials(f)]
    assert len(killed_mid_write) >= 3, f"{len(folders)} rounds"
    for folder in folders:
        finished = int((folder / "done.txt").read_text().split()[-1])
        state = load_checkpoint(folder / keys.MODEL_FILE)  # the temp file is ignored
        # the last finished write, or the next one if it was renamed before the report
        assert state["epoch"] in (finished, finished + 1)
        assert torch.equal(state["marker"], torch.full((4096,), float(state["epoch"])))
        assert all(torch.equal(state["model"][k], w) for k, w in weights.items())
    for folder in killed_mid_write:
        removed = remove_partial_writes(folder, [keys.MODEL_FILE])
        assert removed and not _partials(folder)
        assert load_checkpoint(folder / keys.MODEL_FILE)["epoch"] >= 1


# ---------------------------------------------------------------- SIGKILL mid-training
def _wait_for(run_dir, predicate, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = registry.status(run_dir)
        if predicate(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status {st}; log:\n{registry.log_tail(run_dir)}")


def _kill(run_dir: Path) -> registry.RunStatus:
    pid = registry.read_json(run_dir / registry.LAUNCH_FILE)["pid"]
    os.killpg(pid, signal.SIGKILL)
    # the reaper thread records how the process ended
    return _wait_for(run_dir, lambda s: s.state == "failed" and "signal 9" in (s.error or ""))


def test_sigkill_during_training_leaves_a_resumable_run(tmp_path, slice_path):
    rng = np.random.default_rng(11)
    config = launch.make_config(
        io.DEMO_KEYS, holdout=["KMT2A"], n_genes=50, epochs=10_000, batch_size=32, device="cpu"
    )
    run_dir = launch.launch(tmp_path, "killed", config, slice_path, dataset="slice")
    epoch, kept = 0, []
    for kill in range(2):
        # the first kill waits for a checkpoint; the second may land before its first save
        ready = (lambda s: s.state == "running") if kill else (lambda s: registry.is_run(run_dir))
        _wait_for(run_dir, ready)
        time.sleep(rng.uniform(0.0, 1.5))
        st = _kill(run_dir)
        assert st.can_resume and registry.is_run(run_dir)
        state = load_checkpoint(run_dir / keys.MODEL_FILE)
        assert state["epoch"] >= max(epoch, 1) and {"optimizer", "torch_rng"} <= set(state)
        epoch = int(state["epoch"])
        assert runs.open_run(run_dir).epoch == epoch
        rows = train.read_history(run_dir / keys.HISTORY_FILE)
        kept = [r for r in rows if r["step"] <= state["step"]]
        assert len(kept) == state["step"]  # history.csv is written before the checkpoint
        if kill == 0:
            launch.resume(run_dir)
    # what a kill mid-write leaves: ignored by readers, removed by the next training
    stale = run_dir / f".{keys.MODEL_FILE}.x1y2z3w4.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert runs.open_run(run_dir).epoch == epoch
    launch.resume(run_dir, epochs=epoch + 1)
    st = _wait_for(run_dir, lambda s: not s.active)
    assert st.state == "finished", st.error
    assert not stale.exists() and not _partials(run_dir)
    assert runs.open_run(run_dir).epoch == epoch + 1
    rows = train.read_history(run_dir / keys.HISTORY_FILE)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # no gap, no repeat
    assert rows[: len(kept)] == kept and rows[-1]["epoch"] == epoch + 1


# ---------------------------------------------------------------- crash inside training
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, demo, tiny_config):
    """A run of one finished epoch on the slice, to copy and break."""
    run_dir = tmp_path_factory.mktemp("one_epoch") / "run"
    config = tiny_config.replace(
        data=DataConfig(cell_type_key="cell_type", n_genes=50, holdout=("KMT2A",)),
        train=TrainConfig(epochs=1, batch_size=32, device="cpu"),
    )
    runs.train(_slice(demo), config, run_dir, progress_bar=False)
    return run_dir


def test_nan_loss_fails_the_run_and_keeps_the_last_checkpoint(tmp_path, one_epoch, capsys):
    run_dir = shutil.copytree(one_epoch, tmp_path / "run")
    before = {f: _digest(run_dir / f) for f in (keys.MODEL_FILE, keys.HISTORY_FILE)}
    argv = ["train", "--resume", "--epochs=3", "--batch-size=32", "--lr=1e9", "--device=cpu"]
    assert cli.main([*argv, f"--out={run_dir}"]) == cli.USER_ERROR
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1  # one readable line, no traceback
    message = errors[0]
    assert message.startswith("error: Training diverged: the loss became nan")
    assert "Lower the learning rate (now 1e+09)" in message
    st = registry.status(run_dir)
    assert st.state == "failed" and st.error == message.removeprefix("error: ")
    assert {f: _digest(run_dir / f) for f in before} == before  # nothing diverged was saved
    assert runs.open_run(run_dir).epoch == 1
    two = runs.open_run(run_dir).config.replace(train=TrainConfig(epochs=2, batch_size=32))
    runs.train(None, two, run_dir, resume=True, progress_bar=False)
    assert runs.open_run(run_dir).epoch == 2  # resumable: a sane learning rate works again


def test_an_exception_inside_an_epoch_is_reported(tmp_path, one_epoch, monkeypatch):
    run_dir = shutil.copytree(one_epoch, tmp_path / "run")
    before = _digest(run_dir / keys.MODEL_FILE)

    def broken(*args):
        raise RuntimeError("out of memory on the device (simulated)")

    monkeypatch.setattr(train, "losses", broken)
    two = TrainConfig(epochs=2, batch_size=32, device="cpu")
    config = runs.open_run(run_dir).config.replace(train=two)
    with pytest.raises(RuntimeError, match="simulated"):
        runs.train(None, config, run_dir, resume=True, progress_bar=False)
    st = registry.status(run_dir)
    assert st.state == "failed"
    assert st.error == "RuntimeError: out of memory on the device (simulated)"
    assert _digest(run_dir / keys.MODEL_FILE) == before and runs.open_run(run_dir).epoch == 1


def test_a_second_trainer_of_the_same_folder_is_refused(tmp_path, one_epoch):
    run_dir = shutil.copytree(one_epoch, tmp_path / "run")
    before = _digest(run_dir / keys.MODEL_FILE)
    config = runs.open_run(run_dir).config.replace(train=TrainConfig(epochs=2, batch_size=32))
    with runs.sole_writer(run_dir):  # as a training process holds it
        with pytest.raises(RunError, match="being trained by another process"):
            runs.train(None, config, run_dir, resume=True, progress_bar=False)
    assert _digest(run_dir / keys.MODEL_FILE) == before


# ---------------------------------------------------------------- corrupt or old run folders
def _rewrite(path: Path, **changes) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in changes.items():
        if v is None:
            del state[k]
        else:
            state[k] = v
    torch.save(state, path)


def _smaller_net(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    config["model"]["hidden"] = 16
    _rewrite(path, config=json.dumps(config))


BREAKERS = {
    "truncated": (lambda d: _truncate(d / keys.MODEL_FILE), "is corrupt"),
    "garbage": (lambda d: (d / keys.MODEL_FILE).write_bytes(b"\x00garbage\xff"), "is corrupt"),
    "pickled object": (
        lambda d: torch.save({"format": 1, "opt": torch.optim.SGD}, d / keys.MODEL_FILE),
        "is corrupt",
    ),
    "older format": (lambda d: _rewrite(d / keys.MODEL_FILE, format=0), "incompatible version"),
    "older keys": (
        lambda d: _rewrite(d / keys.MODEL_FILE, vocab=None, split=None),
        "lacks vocab, split",
    ),
    "other network": (lambda d: _smaller_net(d / keys.MODEL_FILE), "does not match the network"),
    "no data": (lambda d: (d / keys.DATA_FILE).unlink(), "incomplete"),
    "truncated data": (lambda d: _truncate(d / keys.DATA_FILE), "cannot be used"),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("fault", list(BREAKERS))
def test_corrupt_or_old_run_folders_raise_run_errors(tmp_path, trained, fault):
    breaker, expected = BREAKERS[fault]
    broken = shutil.copytree(trained[0], tmp_path / "broken")
    breaker(broken)
    with pytest.raises(RunError) as info:
        runs.open_run(broken)
    message = str(info.value)
    assert expected in message and str(broken) in message
    assert "again" in message  # says what to do: train again, copy again
    if fault != "truncated data":  # that one is found by the training process
        with pytest.raises(RunError):  # refused before a process is started
            launch.resume(broken)


def test_listing_survives_damaged_folders(tmp_path, trained, monkeypatch):
    good = shutil.copytree(trained[0], tmp_path / "good")
    for name, (breaker, _) in BREAKERS.items():
        breaker(shutil.copytree(trained[0], tmp_path / name.replace(" ", "-")))
    junk = shutil.copytree(trained[0], tmp_path / "junk-files")
    (junk / keys.HISTORY_FILE).write_text("not,a\nhistory\x00file\n")
    (junk / keys.PROGRESS_FILE).write_text("[1, 2]")
    (junk / keys.SPLIT_FILE).write_text('{"holdout": 3}')
    (junk / keys.CONFIG_FILE).write_text("{not json")
    (junk / registry.LAUNCH_FILE).write_text('{"pid": "x", "started": "y", "returncode": "z"}')
    listed = {r.name: r for r in registry.list_runs(tmp_path)}
    assert set(listed) == {"good", "junk-files", *(n.replace(" ", "-") for n in BREAKERS)}
    assert listed["good"].status.state == "finished"
    assert listed["junk-files"].holdout == () and registry.history(junk).empty
    assert not registry.runs_table(list(listed.values())).empty
    assert runs.open_run(good).epoch == runs.open_run(junk).epoch == 2  # the checkpoint rules
    spawned = []
    monkeypatch.setattr(launch, "_spawn", lambda run_dir, argv, info: spawned.append(argv))
    launch.resume(junk)  # config.json is damaged: the checkpoint's settings are used
    assert "--batch-size=128" in spawned[0] and "--resume" in spawned[0]


# ---------------------------------------------------------------- requests too large for memory
def test_huge_trajectories_are_refused_before_simulating(run, monkeypatch, tmp_path, capsys):
    assert explore.MAX_TRAJECTORY_VALUES is runs.MAX_TRAJECTORY_VALUES  # one cap for all
    genes, pert = len(run.data.genes), run.model.split.train[0]
    cell_type = run.data.cell_types[0]
    monkeypatch.setattr(runs, "MAX_TRAJECTORY_VALUES", 10 * genes * 11)  # 10 cells, 10 steps

    def simulate(*args, **kwargs):
        raise AssertionError("simulated a request it should have refused")

    real = runs.simulate_rows
    monkeypatch.setattr(runs, "simulate_rows", simulate)
    with pytest.raises(ConfigError) as info:
        runs.predict(run, pert, cell_type=cell_type, n_cells=11, steps=10, trajectory=True)
    assert f"11 cells × {genes} genes × 11 time points" in str(info.value)
    assert "--n-cells 10 or less" in str(info.value) and "--steps" in str(info.value)
    with pytest.raises(ConfigError, match="fewer steps \\(--steps 109 or less\\)"):
        runs.check_trajectory_size(1, genes, 200)  # not even one cell fits: fewer steps
    runs.check_trajectory_size(1, genes, 109)
    out = tmp_path / "pred.h5ad"
    argv = ["predict", str(run.path), f"--perturbation={pert}", f"--cell-type={cell_type}"]
    argv += ["--n-cells=20", "--steps=10", "--trajectory", "--device=cpu", f"--out={out}"]
    assert cli.main(argv) == cli.USER_ERROR and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: A trajectory of 20 cells")
    monkeypatch.setattr(runs, "simulate_rows", real)
    ok = runs.predict(run, pert, cell_type=cell_type, n_cells=10, steps=10, trajectory=True)
    assert ok.obsm[keys.TRAJECTORY_X].shape == (10, 11, genes)
    assert runs.predict(run, pert, cell_type=cell_type, n_cells=11, steps=10).n_obs == 11
