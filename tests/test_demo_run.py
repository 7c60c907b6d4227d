"""The shipped demo run (assets/demo-run): it loads with the current code, predicts like a
trained model, stays small, and is installed into an empty runs folder only."""

import json

import numpy as np
import pytest

from departures_core import demo, keys, metrics, registry, runs
from departures_core.config import RunConfig
from departures_core.errors import RunError


@pytest.fixture(scope="module")
def shipped():
    return runs.open_run(demo.DEMO_RUN)


def test_the_shipped_checkpoint_loads_with_this_code(shipped):
    """Fails when the model changed without `python -m departures_core demo-run`."""
    assert shipped.epoch > 0 and shipped.unaffected is not None
    assert demo.weights_dtype(demo.DEMO_RUN).is_floating_point
    size = sum(f.stat().st_size for f in demo.DEMO_RUN.iterdir())
    assert size < 10e6  # weights only, float16


def test_the_shipped_run_predicts_training_conditions_better_than_no_change(shipped):
    data = shipped.data
    strong = [
        c
        for c in data.train_conditions()
        if metrics.e_distance(data.x[c.control], data.x[c.perturbed]) > 0.8
    ][:3]
    assert strong
    for cond in strong:
        pred = runs.predict(shipped, cond.perturbation, cell_type=cond.cell_type, seed=0).X
        observed, control = data.x[cond.perturbed], data.x[cond.control]
        assert np.isfinite(pred).all()
        assert metrics.e_distance(pred, observed) < metrics.e_distance(control, observed)


def test_it_cannot_be_resumed_and_says_so(tmp_path):
    target = demo.install(tmp_path)
    with pytest.raises(RunError, match="cannot be resumed"):
        runs.train(None, RunConfig(), target, resume=True)


def test_installed_into_an_empty_runs_folder_only(tmp_path):
    target = demo.install(tmp_path / "runs")
    assert target == tmp_path / "runs" / demo.DEMO_RUN_NAME
    info = registry.describe(target)
    assert info.status.state == "finished"
    assert json.loads((target / keys.PROGRESS_FILE).read_text())["state"] == "finished"
    assert demo.install(tmp_path / "runs") is None  # already there: left as it is
    # a folder with a run of the user's gets nothing added
    other = tmp_path / "mine"
    (other / "my-run").mkdir(parents=True)
    (other / "my-run" / keys.MODEL_FILE).write_bytes(b"x")
    assert demo.install(other) is None and not (other / demo.DEMO_RUN_NAME).exists()
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".demo-")]
