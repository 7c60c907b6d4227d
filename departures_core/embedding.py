"""2-D embeddings (UMAP) of a dataset's cells: precomputed, cached on disk, or fitted in the
background. scikit-learn and umap-learn are imported lazily: the first UMAP fit in a process
pays ~60 s of numba compilation, so bundled data ship their embedding in ``assets/``."""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .io import ASSETS

DEMO_EMBEDDING = ASSETS / "demo_umap.npz"
MAX_CELLS = 50_000  # larger datasets are embedded on a seeded subsample


@dataclass(frozen=True)
class Embedding:
    """2-D coordinates of (a subset of) a dataset's cells.

    cell_names : array of str, shape (n,)
    coords : float32 array, shape (n, 2)
    """

    cell_names: np.ndarray
    coords: np.ndarray
    method: str = "umap"

    def aligned_to(self, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, coords)``: the rows of ``adata`` that have coordinates, and theirs."""
        pos = {name: i for i, name in enumerate(adata.obs_names)}
        keep = [(pos[n], i) for i, n in enumerate(self.cell_names) if n in pos]
        rows = np.array([r for r, _ in keep], dtype=int)
        return rows, self.coords[[i for _, i in keep]]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(
            tmp,
            cell_names=self.cell_names.astype(str),
            coords=self.coords.astype(np.float32),
            method=self.method,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Embedding:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["cell_names"], f["coords"], str(f["method"]))


def matches(embedding: Embedding, adata: ad.AnnData) -> bool:
    """True when every embedded cell is in ``adata`` (a precomputed file fits this dataset)."""
    names = set(map(str, adata.obs_names))
    return len(embedding.cell_names) > 0 and all(n in names for n in embedding.cell_names)


def log_normalised(adata: ad.AnnData, *, counts: bool) -> np.ndarray | sp.spmatrix:
    """``X`` as log1p(CP10k) when it holds counts, else as it is (never modifies ``adata``)."""
    x = adata.X
    if not counts:
        return x
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, np.float32)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1.0)
    if sp.issparse(x):
        x = sp.diags(scale) @ x
        x.data = np.log1p(x.data)
        return x
    return np.log1p(x * scale[:, None])


_UMAP_LOCK = threading.Lock()


def compute_umap(
    adata: ad.AnnData,
    *,
    n_pcs: int = 50,
    random_state: int = 0,
    max_cells: int = MAX_CELLS,
    report=None,
) -> Embedding:
    """PCA (``n_pcs``) then UMAP (umap-learn defaults) of the log-normalised expression.

    ``report(stage: str)`` is called as each stage starts. Datasets with more than
    ``max_cells`` cells are embedded on a seeded subsample of that size.
    """
    from .pp import is_counts

    report = report or (lambda stage: None)
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_cells:
        rows = np.sort(
            np.random.default_rng(random_state).choice(adata.n_obs, max_cells, replace=False)
        )
    sub = adata[rows]
    report("log-normalising")
    x = log_normalised(sub, counts=is_counts(sub))
    report("PCA")
    from sklearn.decomposition import PCA, TruncatedSVD

    n_comp = max(2, min(n_pcs, x.shape[1] - 1, x.shape[0] - 1))
    if sp.issparse(x) and x.shape[0] * x.shape[1] > 2e8:
        pcs = TruncatedSVD(n_comp, random_state=random_state).fit_transform(x)
    else:
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        pcs = PCA(n_comp, random_state=random_state).fit_transform(x.astype(np.float32))
    report("UMAP (the first one in a fresh app process compiles numba: about a minute)")
    import umap

    # numba compiles umap-learn's kernels on first use; two threads compiling at once can
    # fail, and the app fits in a worker thread while other code may fit in the main one.
    with _UMAP_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by random_state"
        coords = umap.UMAP(random_state=random_state).fit_transform(pcs)
    return Embedding(np.asarray(adata.obs_names[rows]).astype(str), coords.astype(np.float32))


def fingerprint(path: str | Path) -> str:
    """A cache key for a dataset file: path, size and modification time."""
    st = Path(path).stat()
    return hashlib.sha1(
        f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    ).hexdigest()[:16]


@dataclass
class Job:
    """One background embedding: its stage while running, then its result or error."""

    key: str
    started: float = field(default_factory=time.monotonic)
    stage: str = "queued"
    result: Embedding | None = None
    error: str | None = None
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class EmbeddingJobs:
    """Fits embeddings in a worker thread, one job per dataset key, shared by all sessions.

    A finished embedding is written to ``cache_path`` (when given) and read back from there by
    later jobs with the same key, so a restarted app does not fit it again.
    """

    def __init__(self, executor: Executor | None = None):
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="umap")
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> Job | None:
        return self.jobs.get(key)

    def submit(
        self,
        key: str,
        adata: ad.AnnData,
        *,
        cache_path: str | Path | None = None,
        retry: bool = False,
    ) -> Job:
        """The job for ``key``, started if there is none, or (``retry``) if it failed.

        ``adata`` is read, never modified: it may be shared by several sessions.
        """
        with self.lock:
            job = self.jobs.get(key)
            if job is not None and not (retry and job.error):
                return job
            job = self.jobs[key] = Job(key)
        self.executor.submit(self._run, job, adata, cache_path)
        return job

    @staticmethod
    def _run(job: Job, adata: ad.AnnData, cache_path: str | Path | None) -> None:
        def report(stage: str) -> None:
            job.stage = stage

        try:
            if cache_path is not None and Path(cache_path).exists():
                cached = Embedding.load(cache_path)
                if matches(cached, adata):
                    job.result = cached
                    return
            job.result = compute_umap(adata, report=report)
            if cache_path is not None:
                job.result.save(cache_path)
        except Exception as exc:  # shown to the user; the app keeps working without a UMAP
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.monotonic()


def precompute_demo(path: str | Path = DEMO_EMBEDDING) -> Embedding:
    """Fit the demo dataset's UMAP and write it to ``assets/`` (run once, ships with the app)."""
    from .io import load_demo

    emb = compute_umap(load_demo())
    emb.save(path)
    return emb


if __name__ == "__main__":
    e = precompute_demo()
    print(f"wrote {DEMO_EMBEDDING} ({len(e.cell_names)} cells)")
