"""The shipped demo run: a default model of the demo dataset, weights only, in ``assets/``.

The app installs it into an empty runs folder, so every view draws on first visit without
training. Rebuild it whenever the model changes (a test fails when it no longer loads):

    python -m departures_core demo-run            # trains the default model (~4 min on 2 cores)
    python -m departures_core demo-run --from RUN # or exports a run trained on the demo
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from . import io, keys, paths
from .model import atomic_write_text, load_checkpoint, save_checkpoint

DEMO_RUN = paths.DEMO_RUN
DEMO_RUN_NAME = "demo"
# what a run folder needs to be opened, predicted from and shown (no optimiser state)
SHIPPED = (
    keys.CONFIG_FILE,
    keys.SPLIT_FILE,
    keys.DATA_FILE,
    keys.RESPONDERS_FILE,
    keys.HISTORY_FILE,
    keys.PROGRESS_FILE,
)


def export(run_dir: str | Path, out: str | Path = DEMO_RUN) -> Path:
    """Write ``run_dir`` as a compact run folder into ``out``: its files, and its checkpoint
    with the weights in float16 and without the optimiser (``model.pt`` about 8 MB instead
    of 46); it opens and predicts like the original, but cannot be resumed."""
    run_dir, out = Path(run_dir), Path(out)
    state = load_checkpoint(run_dir / keys.MODEL_FILE)
    state = {k: v for k, v in state.items() if k not in ("optimizer", "torch_rng")}
    state["model"] = {
        k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / name)
    save_checkpoint(out / keys.MODEL_FILE, state)
    progress = json.loads((out / keys.PROGRESS_FILE).read_text())
    progress.update(state="finished", device="cpu")
    atomic_write_text(out / keys.PROGRESS_FILE, json.dumps(progress))
    return out


def build(out: str | Path = DEMO_RUN, *, seed: int = 0, progress_bar: bool = True) -> Path:
    """Train the default model on the demo dataset and `export` it into ``out``."""
    from . import runs
    from .config import DataConfig, RunConfig

    config = RunConfig(data=DataConfig(**dataclasses.asdict(io.DEMO_KEYS)), seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        runs.train(io.load_demo(), config, run_dir, progress_bar=progress_bar)
        return export(run_dir, out)


def install(runs_dir: str | Path, source: str | Path = DEMO_RUN) -> Path | None:
    """Copy the shipped demo run into ``runs_dir`` as ``demo`` when that folder holds no run
    yet (nothing of the user's is touched); the installed run, or None."""
    source, target = Path(source), Path(runs_dir) / DEMO_RUN_NAME
    if not (source / keys.MODEL_FILE).exists() or target.exists():
        return None
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if any(p.is_dir() and (p / keys.MODEL_FILE).exists() for p in runs_dir.iterdir()):
        return None
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=runs_dir))
    shutil.copytree(source, staging, dirs_exist_ok=True)
    staging.rename(target)  # all or nothing: a half-copied run never shows
    return target


def weights_dtype(run_dir: str | Path) -> torch.dtype:
    """The dtype the run's weights are stored in (float16 for the shipped demo)."""
    state = load_checkpoint(Path(run_dir) / keys.MODEL_FILE)
    return next(v.dtype for v in state["model"].values() if v.is_floating_point())
