"""Embeddings: the demo's ships precomputed; others are fitted in the background, cached on
disk, and shown by the Data page when ready (UMAP itself is faked here: it costs ~60 s of
numba compilation in a fresh process)."""

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from app_helpers import goto, plotly_specs, texts
from scipy import sparse

from departures_core import embedding, io
from departures_core.embedding import Embedding, EmbeddingJobs


def _fake_umap(calls, delay=0.0):
    def fit(adata, **kw):
        calls.append(adata.n_obs)
        time.sleep(delay)
        coords = np.random.default_rng(0).normal(size=(adata.n_obs, 2)).astype(np.float32)
        return Embedding(np.asarray(adata.obs_names).astype(str), coords)

    return fit


def _wait(job, timeout=20):
    end = time.monotonic() + timeout
    while not job.done and time.monotonic() < end:
        time.sleep(0.05)
    assert job.done


def test_demo_embedding_is_shipped_and_matches_the_demo(demo):
    emb = Embedding.load(embedding.DEMO_EMBEDDING)
    assert emb.coords.shape == (demo.n_obs, 2) and np.isfinite(emb.coords).all()
    assert embedding.matches(emb, demo)
    rows, coords = emb.aligned_to(demo[::2])
    assert len(rows) == len(coords) == demo[::2].n_obs


def test_log_normalised_counts_without_touching_input():
    x = sparse.csr_matrix(np.array([[0, 10, 30], [5, 5, 0]], dtype=np.float32))
    adata = ad.AnnData(x)
    out = embedding.log_normalised(adata, counts=True)
    assert np.allclose(np.expm1(out.toarray()).sum(axis=1), 1e4)
    assert adata.X[0, 1] == 10


def test_jobs_run_in_background_and_cache_to_disk(monkeypatch, tmp_path, demo):
    calls = []
    monkeypatch.setattr(embedding, "compute_umap", _fake_umap(calls, delay=0.2))
    cache = tmp_path / "umap.npz"
    jobs = EmbeddingJobs()
    job = jobs.submit("k", demo, cache_path=cache)
    assert jobs.submit("k", demo, cache_path=cache) is job  # one fit per dataset
    _wait(job)
    assert job.error is None and job.result.coords.shape == (demo.n_obs, 2)
    assert cache.exists()
    again = EmbeddingJobs().submit("k", demo, cache_path=cache)  # e.g. after an app restart
    _wait(again)
    assert calls == [demo.n_obs] and np.array_equal(again.result.coords, job.result.coords)


def test_failed_job_reports_and_retries_only_when_asked(monkeypatch, demo):
    def boom(adata, **kw):
        raise ValueError("too few cells")

    monkeypatch.setattr(embedding, "compute_umap", boom)
    jobs = EmbeddingJobs()
    job = jobs.submit("bad", demo)
    _wait(job)
    assert "too few cells" in job.error
    assert jobs.submit("bad", demo) is job
    retried = jobs.submit("bad", demo, retry=True)
    assert retried is not job
    _wait(retried)  # before monkeypatch puts the real (slow) UMAP back


def test_data_page_shows_progress_then_the_umap(app, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(embedding, "compute_umap", _fake_umap(calls, delay=1.0))
    small = io.load_demo()[:300].copy()
    small.obs_names = [f"other_{i}" for i in range(small.n_obs)]  # not the demo's cells
    small.obs = pd.DataFrame(small.obs[["condition", "cell_type"]])
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    at = goto(app(), "data")
    at.file_uploader(key="upload").upload("small.h5ad", path.read_bytes(), "x").run()
    assert not at.exception
    assert "Computing the UMAP in the background" in texts(at.info)
    end = time.monotonic() + 20
    while calls == [] or "Computing" in texts(at.info) and time.monotonic() < end:
        time.sleep(0.3)
        at.run()
    assert not at.exception
    assert "UMAP of 300 cells" in plotly_specs(at)[0]


@pytest.mark.parametrize("n", [3])
def test_embedding_save_load_round_trip(tmp_path, n):
    emb = Embedding(
        np.array([f"c{i}" for i in range(n)]), np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    )
    emb.save(tmp_path / "e.npz")
    back = Embedding.load(tmp_path / "e.npz")
    assert back.cell_names.tolist() == emb.cell_names.tolist()
    assert np.array_equal(back.coords, emb.coords)
