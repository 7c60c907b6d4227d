"""Real-size screens: the matrix stays sparse, losses are read back in blocks, threads are
capped, a file too large for memory is refused up front, and torchrun trains one run with
several processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from departures_core import distributed, io, runs, train
from departures_core.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    resolved_batch,
)
from departures_core.data import Expression
from departures_core.errors import InputFileError

ROOT = Path(__file__).resolve().parent.parent


def _screen(cells: int = 3000, genes: int = 400, seed: int = 0) -> ad.AnnData:
    """Synthetic droplet counts, CSR, ~10 % non-zero: 6 perturbations in 2 cell types."""
    rng = np.random.default_rng(seed)
    perts = np.array(["control"] * 2 + [f"G{i}" for i in range(6)])
    obs = pd.DataFrame(
        {
            "perturbation": rng.choice(perts, cells),
            "cell_type": rng.choice(["a", "b"], cells),
        },
        index=[f"c{i}" for i in range(cells)],
    )
    mean = np.exp(rng.normal(-2.5, 1.2, genes))
    lam = np.tile(mean, (cells, 1))
    for i in range(6):  # each perturbation raises a few genes
        lam[obs["perturbation"].to_numpy() == f"G{i}", i * 5 : i * 5 + 5] *= 6
    counts = rng.poisson(lam).astype(np.float32)
    counts[:, 0] += 40 * (rng.random(cells) < 0.1)  # a few large counts: read as raw counts
    return ad.AnnData(
        sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(genes)])
    )


SCREEN_CONFIG = RunConfig(
    data=DataConfig(
        perturbation_key="perturbation", control="control", cell_type_key="cell_type", n_genes=300
    ),
    model=ModelConfig(hidden=64, cond_dim=32),
    train=TrainConfig(epochs=2, device="cpu"),
)


@pytest.fixture
def densified(monkeypatch):
    """Rows of every CSR matrix made dense during the test (the largest is what matters)."""
    sizes = []
    original = sp.csr_matrix.toarray

    def counting(self, *args, **kwargs):
        sizes.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", counting)
    monkeypatch.setattr(sp.csr_array, "toarray", counting, raising=False)
    return sizes


def test_a_sparse_screen_is_never_made_dense_whole(tmp_path, densified):
    adata = _screen()
    density = adata.X.nnz / np.prod(adata.shape)
    assert 0.05 < density < 0.2
    history = runs.train(adata, SCREEN_CONFIG, tmp_path / "run", progress_bar=False)
    run = runs.open_run(tmp_path / "run")
    assert run.data.x.sparse and run.data.x.shape == (3000, 300)
    # the CSR arrays take about (4 + 4) bytes per non-zero, far less than the dense matrix
    assert run.data.x.nbytes < 0.5 * 3000 * 300 * 4
    runs.predict(run, "G1", cell_type="a", n_cells=50, steps=5)
    assert len(history) > 20
    # minibatches (64 pairs), single conditions and the control cells the gene graph is
    # built from (at most 5,000) were made dense, never the whole matrix
    largest_condition = max(len(c.perturbed) + len(c.control) for c in run.data.conditions)
    controls = int((run.data.perturbation == "control").sum())
    assert densified and max(densified) <= max(largest_condition, controls) < 1500


def test_expression_rows_index_as_dense_arrays():
    x = sp.random(50, 8, density=0.3, format="csr", dtype=np.float32, random_state=0)
    e = Expression(x)
    dense = x.toarray()
    rows = np.array([3, 1, 3, 40])
    np.testing.assert_array_equal(e[rows], dense[rows])
    np.testing.assert_array_equal(e[rows, [0, 2]], dense[rows][:, [0, 2]])
    np.testing.assert_allclose(e.mean(rows), dense[rows].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([c for _, c in e.chunks(7)]), dense)
    assert e.sparse and not Expression(dense).sparse and len(e) == 50


def test_losses_are_read_back_in_blocks_not_every_step(tmp_path, monkeypatch, demo):
    reads = []
    original = torch.Tensor.tolist

    def counting(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    config = RunConfig(
        data=DataConfig(cell_type_key="cell_type"),
        model=ModelConfig(hidden=32, cond_dim=16),
        train=TrainConfig(epochs=2, device="cpu", validation=0.0),
    )
    history = runs.train(demo, config, tmp_path / "run", progress_bar=False)
    steps = len(history)
    assert steps > 3 * train.LOG_EVERY
    assert [r["step"] for r in history] == list(range(1, steps + 1))  # still one row a step
    loss_reads = [s for s in reads if len(s) == 2 and s[1] == 3]
    assert len(loss_reads) <= steps // train.LOG_EVERY + 2


def test_training_threads_are_capped():
    cores = len(os.sched_getaffinity(0))
    assert distributed.threads_for(3) == 3
    assert distributed.threads_for(0, distributed.Context()) == max(1, cores // 2)
    four = distributed.Context(rank=1, world=4, local_rank=1, local_world=4)
    assert distributed.threads_for(0, four) == max(1, cores // 4)


def test_batch_size_and_learning_rate_follow_the_device():
    auto = TrainConfig(lr=1e-3)
    assert resolved_batch(auto, "cpu") == (64, 1e-3)
    assert resolved_batch(auto, "cuda") == (256, pytest.approx(2e-3))
    assert resolved_batch(TrainConfig(batch_size=32, lr=5e-4), "cuda") == (32, 5e-4)


def test_each_process_pairs_its_own_share_of_conditions():
    sizes = [500, 400, 300, 200, 100, 100]
    shares = [distributed.Context(r, 2, r, 2).share(sizes) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(6))
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 100


def test_a_file_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "screen.h5ad"
    _screen(cells=500, genes=100).write_h5ad(path)
    assert io.matrix_bytes(path) == _screen(cells=500, genes=100).X.nnz * 8
    monkeypatch.setattr(io, "available_memory", lambda: 10_000)
    with pytest.raises(InputFileError, match="GB of memory"):
        io.read(path)
    monkeypatch.setattr(io, "available_memory", lambda: 10**12)
    assert io.read(path).n_obs == 500


def test_torchrun_trains_one_run_with_two_processes(tmp_path):
    """2 gloo processes x 2 epochs on the demo: one run folder written by rank 0, resumable
    under torchrun, and predicted from like any other run."""
    out = tmp_path / "run"

    def torchrun(*options: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_port", str(29500 + os.getpid() % 1000)]
        command += ["-m", "departures_core", "train", "--device", "cpu", "--threads", "1"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [*command, *options, "--out", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    proc = torchrun("--epochs", "2", "--batch-size", "128")
    history = pd.read_csv(out / "history.csv")
    data = runs.open_run(out).data
    fit_data, _ = train.validation_split(data, TrainConfig.validation, seed=0)
    pairs = sum(len(c.perturbed) for c in fit_data.train_conditions())
    per_epoch = -(-pairs // (128 * 2))  # both processes' batches make one step
    assert abs(len(history) - 2 * per_epoch) <= 2
    assert json.loads((out / "progress.json").read_text())["state"] == "finished"
    assert proc.stderr.count("saved run to") == 1  # rank 0 alone reports and writes
    assert not list(out.glob("*.tmp*"))

    torchrun("--resume", "--epochs", "3", "--batch-size", "128")
    resumed = pd.read_csv(out / "history.csv")
    assert resumed["epoch"].max() == 3 and len(resumed) > len(history)
    run = runs.open_run(out)
    assert run.epoch == 3
    pred = runs.predict(run, "KLF1", cell_type="k562", n_cells=40, steps=5)
    assert pred.shape == (40, data.x.shape[1]) and np.isfinite(pred.X).all()
