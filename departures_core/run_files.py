"""A training run's bookkeeping in its folder: the lock that keeps a second trainer out,
``progress.json`` (what the app and the CLI show while it trains), and the check that a
checkpoint can be resumed. `runs.train` uses them."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from . import keys
from .errors import DeparturesError, RunError
from .model import atomic_write_text

LOCK_FILE = ".train.lock"  # held (flock) by the one process training a run folder


@contextmanager
def sole_writer(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` while training it.

    A second process training the same folder is refused instead of writing over the first
    one's files. The operating system drops the lock when the process ends, however it ends
    (SIGKILL included), so a killed run never stays locked.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one trainer per folder is up to the user
        yield
        return
    with open(run_dir / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(
                f"{run_dir} is being trained by another process; wait for it to finish, or "
                "stop it first (the app's Stop button, or create a file named STOP there)."
            ) from None
        yield


def check_resumable(run_dir: Path, state: dict) -> None:
    """Refuse to resume from a checkpoint without its optimiser and random state."""
    missing = [k for k in ("optimizer", "torch_rng") if k not in state]
    if missing:
        raise RunError(
            f"{run_dir / keys.MODEL_FILE} holds a model but not its training state "
            f"({', '.join(missing)}), so it cannot be resumed; train a new run instead."
        )


class ProgressFile:
    """Writes ``progress.json`` (step, total, epoch, losses, state) at most once a second."""

    def __init__(self, path: Path, device, callback=None):
        self.path, self.device, self.callback, self.last = path, str(device), callback, 0.0

    def __call__(self, p) -> None:
        if self.callback:
            self.callback(p)
        now = time.monotonic()
        if now - self.last >= 1.0 or p.step == p.total_steps:
            self.last = now
            self._write(
                "running",
                step=p.step,
                total=p.total_steps,
                epoch=p.epoch,
                loss_cont=p.loss_cont,
                loss_disc=p.loss_disc,
            )

    def finish(self, history: list[dict], *, stopped: bool) -> None:
        last = json.loads(self.path.read_text()) if self.path.exists() else {}
        last = {k: v for k, v in last.items() if k not in ("state", "device")}
        step = history[-1]["step"] if history else 0
        if not stopped:  # a resume asking for no more epochs than were done is finished too
            last["total"] = step
        self._write("stopped" if stopped else "finished", **{**last, "step": step})

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(exc, DeparturesError):  # its message says what to do already
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self._write("failed", error=reason)

    def _write(self, state: str, **fields) -> None:
        atomic_write_text(self.path, json.dumps({"state": state, "device": self.device, **fields}))
