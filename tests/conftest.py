"""Shared fixtures: the bundled demo dataset and one tiny trained run per session."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` (CI) as well as `python -m pytest`
    sys.path.insert(0, str(ROOT))

from departures_core import io, runs  # noqa: E402
from departures_core.config import (  # noqa: E402
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

torch.set_num_threads(2)  # what CI has

# A tiny model on the demo: 2 epochs of ~36 steps each, a few seconds on 2 cores.
TINY = RunConfig(
    data=DataConfig(cell_type_key="cell_type"),
    model=ModelConfig(hidden=64, cond_dim=32),
    train=TrainConfig(epochs=2, batch_size=128, device="cpu"),
)


@pytest.fixture(scope="session")
def tiny_config() -> RunConfig:
    return TINY


@pytest.fixture(scope="session")
def demo():
    """The demo AnnData, read once. Tests that modify it must work on a ``.copy()``."""
    return io.load_demo()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo):
    """``(run_dir, history)`` of one tiny training run on the demo, shared by the session."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    history = runs.train(demo, TINY, run_dir, progress_bar=False)
    return run_dir, history


@pytest.fixture(scope="session")
def run(trained):
    """The shared run, opened once (`runs.Run`). Do not train into it."""
    return runs.open_run(trained[0])
