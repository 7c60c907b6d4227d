"""Run folders as the app sees them: names, status, history, listing.

A run trains in its own process (`departures_core.launch`), which reports through its run
folder: ``progress.json``, ``history.csv``, ``train.log`` and ``launch.json`` (pid, command,
exit status). This module reads them back; it never starts or stops anything.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from . import keys, paths
from .errors import DeparturesError, RunError

RUNS_ENV = "DEPARTURES_RUNS_DIR"
LAUNCH_FILE = "launch.json"
LOG_FILE = "train.log"
UPLOADS = "uploads"  # staged uploads in the runs folder; inputs kept in a run folder
ACTIVE = ("starting", "running", "stopping")
HISTORY_COLUMNS = ("step", "epoch", "loss_cont", "loss_disc", "loss", "seconds")


def default_runs_dir() -> Path:
    """``$DEPARTURES_RUNS_DIR`` when set, else ``runs/`` at the repository root (installed:
    ``runs/`` in the current working directory)."""
    return Path(os.environ.get(RUNS_ENV) or paths.runs_dir()).expanduser().resolve()


def safe_name(name: str) -> str:
    """A run or file name that cannot leave its folder: letters, digits, ``. _ -`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name).strip()).strip(".-_")[:80]
    if not cleaned:
        raise DeparturesError(
            f"'{name}' is not usable as a name; use letters, digits, '-', '_' or '.'."
        )
    return cleaned


def run_path(runs_dir: str | Path, name: str) -> Path:
    """The folder of run ``name`` inside ``runs_dir`` (the name sanitised first)."""
    root = Path(runs_dir).resolve()
    path = (root / safe_name(name)).resolve()
    if path.parent != root:  # defence in depth; safe_name already removes separators
        raise DeparturesError(f"Run name '{name}' points outside the runs folder.")
    if path.name == UPLOADS:  # staged uploads live there; a run there would not be listed
        raise DeparturesError(f"'{UPLOADS}' is reserved for uploaded files; choose another name.")
    return path


def suggest_name(prefix: str, runs_dir: str | Path) -> str:
    """``prefix-MMDD-HHMM``, with a counter if that run exists already."""
    base = f"{safe_name(prefix)}-{datetime.now():%m%d-%H%M}"
    name, i = base, 2
    while (Path(runs_dir) / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def is_run(path: str | Path) -> bool:
    """A folder with a checkpoint and its config: trained here or copied from elsewhere."""
    path = Path(path)
    return (path / keys.MODEL_FILE).is_file() and (path / keys.CONFIG_FILE).is_file()


def check_run_folder(path: str | Path) -> Path:
    """``path`` resolved, or a `RunError` saying what is missing."""
    path = Path(str(path).strip()).expanduser()
    if not path.is_dir():
        raise RunError(f"{path} is not a folder. Give the folder a training run wrote.")
    missing = [f for f in (keys.MODEL_FILE, keys.CONFIG_FILE) if not (path / f).is_file()]
    if missing and not (path / LAUNCH_FILE).exists():
        raise RunError(
            f"{path} has no {' or '.join(missing)}; it is not a run folder. "
            "Train one with `python -m departures_core train ... --out FOLDER`."
        )
    return path.resolve()


# ------------------------------------------------------------------ status
@dataclass(frozen=True)
class RunStatus:
    """Where a run stands. ``state`` is one of starting, running, stopping, finished,
    stopped, cancelled, failed."""

    state: str
    step: int = 0
    total: int = 0
    epoch: int = 0
    loss_cont: float | None = None
    loss_disc: float | None = None
    device: str = ""
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0

    @property
    def can_resume(self) -> bool:
        return self.state in ("stopped", "failed", "finished")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; empty when missing, unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _number(d: dict, key: str) -> int | float | None:
    """``d[key]`` when it is a number (a damaged file may hold anything)."""
    v = d.get(key)
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _alive(pid: int | None) -> bool:
    """True while ``pid`` is a live (not zombie) training process."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.parent.exists():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"departures_core" in cmd
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def log_tail(run_dir: str | Path, n: int = 30) -> str:
    """The last ``n`` lines of the run's log (progress-bar redraws collapsed)."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return "(no log: this run was not started from the app)"
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 50_000))
        text = fh.read().decode(errors="replace")
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in lines if ln.strip()][-n:])


def log_error(run_dir: str | Path) -> str:
    """The reason a run failed, read from the end of its log."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return "the training process ended without a log"
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 20_000))
        lines = [ln.strip() for ln in fh.read().decode(errors="replace").split("\n")]
    lines = [ln for ln in lines if ln and "\r" not in ln]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    code = _number(read_json(Path(run_dir) / LAUNCH_FILE), "returncode")
    if code is not None and code < 0:
        how = f"was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    else:
        how = "stopped unexpectedly" + (f" with exit status {code}" if code else "")
    last = [ln for ln in lines if not ln.startswith("$ ")]  # the launch line says nothing
    tail = f": {last[-1]}" if last else ""
    return f"the training process {how}{tail} (full log: {path})"


def status(run_dir: str | Path) -> RunStatus:
    """Combine ``progress.json``, ``launch.json``, the STOP file and the process's liveness."""
    run_dir = Path(run_dir)
    prog = read_json(run_dir / keys.PROGRESS_FILE)
    launch = read_json(run_dir / LAUNCH_FILE)
    fields = {
        k: _number(prog, k)
        for k in ("step", "total", "epoch", "loss_cont", "loss_disc")
        if _number(prog, k) is not None
    }
    if isinstance(prog.get("device"), str):
        fields["device"] = prog["device"]
    # progress.json written by the latest launch (a resume starts with the old one in place)
    fresh = (
        bool(prog)
        and _modified(run_dir / keys.PROGRESS_FILE) >= (_number(launch, "started") or 0) - 1
    )
    stop = (run_dir / keys.STOP_FILE).exists()
    pid = _number(launch, "pid")
    if _alive(int(pid) if pid else None) and launch.get("returncode") is None:
        if stop:
            return RunStatus("stopping", **fields)
        running = fresh and prog.get("state") == "running"
        return RunStatus("running" if running else "starting", **fields)
    state = prog.get("state") if fresh else None
    if state in ("finished", "stopped"):
        return RunStatus(state, **fields)
    if state == "failed":
        error = prog.get("error")
        return RunStatus("failed", **fields, error=str(error) if error else log_error(run_dir))
    if state == "running":  # the process died after its last report
        if fields.get("step", 0) >= fields.get("total", 0):
            return RunStatus("finished", **fields)
        if stop:
            return RunStatus("stopped", **fields)
        return RunStatus("failed", **fields, error=log_error(run_dir))
    if stop:
        if is_run(run_dir):
            return RunStatus("stopped", **fields)
        return RunStatus("cancelled", **fields, error="stopped before the first training step")
    if is_run(run_dir) and _number(launch, "returncode") in (None, 0):
        # a run copied from elsewhere, or one whose process outlived the app that started it
        fields = fields or _from_history(run_dir)
        done = fields.get("step", 0) >= fields.get("total", 0)
        return RunStatus("finished" if done else "stopped", **fields)
    return RunStatus("failed", **fields, error=log_error(run_dir))


def _modified(path: Path) -> float:
    """``path``'s modification time; 0 when it does not exist."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _from_history(run_dir: Path) -> dict:
    h = history(run_dir)
    if h.empty:
        return {}
    last = h.iloc[-1]
    return {
        "step": int(last["step"]),
        "total": int(last["step"]),
        "epoch": int(last["epoch"]),
        "loss_cont": float(last["loss_cont"]),
        "loss_disc": float(last["loss_disc"]),
    }


def history(run_dir: str | Path) -> pd.DataFrame:
    """Per-step losses (``history.csv``); empty with the right columns before the first epoch
    (and when the file is damaged: losses are for display, never a reason to fail)."""
    path = Path(run_dir) / keys.HISTORY_FILE
    empty = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    try:
        h = pd.read_csv(path)
    except (OSError, ValueError):
        return empty
    if not set(HISTORY_COLUMNS) <= set(h.columns):
        return empty
    h = h[list(HISTORY_COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna()
    return h.astype({"step": int, "epoch": int}).reset_index(drop=True)


# ------------------------------------------------------------------ listing
@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    status: RunStatus
    modified: datetime
    holdout: tuple[str, ...]
    dataset: str


def describe(path: str | Path) -> RunInfo:
    """Name, status, hold-out and dataset of one run folder."""
    path = Path(path)
    files = [
        path / f
        for f in (keys.PROGRESS_FILE, keys.MODEL_FILE, LAUNCH_FILE, keys.CONFIG_FILE)
        if (path / f).exists()
    ]
    modified = max((f.stat().st_mtime for f in files), default=path.stat().st_mtime)
    holdout = read_json(path / keys.SPLIT_FILE).get("holdout")
    dataset = read_json(path / LAUNCH_FILE).get("dataset")
    return RunInfo(
        path.name,
        path,
        status(path),
        datetime.fromtimestamp(modified),
        tuple(map(str, holdout)) if isinstance(holdout, list) else (),
        dataset if isinstance(dataset, str) else "",
    )


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Run folders directly inside ``runs_dir``, most recently changed first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name != UPLOADS
        and (is_run(p) or (p / LAUNCH_FILE).exists())
    ]
    infos = []
    for p in found:
        try:
            infos.append(describe(p))
        except OSError:  # deleted (or made unreadable) while listing
            continue
    return sorted(infos, key=lambda r: r.modified, reverse=True)


def runs_table(runs: list[RunInfo]) -> pd.DataFrame:
    """One row per run, for display."""
    return pd.DataFrame(
        [
            {
                "run": r.name,
                "state": r.status.state,
                "epoch": r.status.epoch,
                "progress": f"{r.status.step}/{r.status.total}" if r.status.total else "",
                "held out": len(r.holdout),
                "dataset": r.dataset,
                "changed": r.modified,
            }
            for r in runs
        ],
        columns=["run", "state", "epoch", "progress", "held out", "dataset", "changed"],
    )
