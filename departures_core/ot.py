"""Entropic OT pairing of control and perturbed cells (POT Sinkhorn), and the random ablation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

COSTS = ("euclidean", "cosine")
SCALES = ("max", "mean")


@dataclass(frozen=True)
class Coupling:
    """A Sinkhorn plan between ``n0`` control and ``n1`` perturbed cells.

    Attributes
    ----------
    plan : ndarray, shape (n0, n1)
        Joint distribution over pairs; sums to 1, marginals uniform.
    cost : ndarray, shape (n0, n1)
        The cost the plan minimises, normalised by its maximum.
    marginal_error : float
        L1 distance of the plan's row and column sums from the uniform marginals (summed).
    converged : bool
        Whether Sinkhorn reached ``stop_thr`` before ``max_iter``.
    n_iter : int
        Sinkhorn iterations run.
    """

    plan: np.ndarray
    cost: np.ndarray
    marginal_error: float
    converged: bool
    n_iter: int
    epsilon: float
    cost_kind: str

    @property
    def entropy(self) -> float:
        """Shannon entropy of the plan; ``log(n0 * n1)`` for the independent coupling."""
        p = self.plan[self.plan > 0]
        return float(-(p * np.log(p)).sum())


def cost_matrix(
    x0: np.ndarray, x1: np.ndarray, *, cost: str = "euclidean", scale: str = "max"
) -> np.ndarray:
    """Pairwise cost between rows, divided by its maximum or its mean (``scale``), so that
    ``epsilon`` is relative to the cost (OTT-JAX scales by the mean).

    ``euclidean`` is the squared Euclidean distance; ``cosine`` is ``1 - cos``.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    x0 = np.asarray(x0, dtype=np.float64)
    x1 = np.asarray(x1, dtype=np.float64)
    if cost == "euclidean":
        c = (x0**2).sum(1)[:, None] + (x1**2).sum(1)[None, :] - 2.0 * x0 @ x1.T
        c = np.maximum(c, 0.0)
    else:
        n0 = x0 / np.maximum(np.linalg.norm(x0, axis=1, keepdims=True), 1e-12)
        n1 = x1 / np.maximum(np.linalg.norm(x1, axis=1, keepdims=True), 1e-12)
        c = np.clip(1.0 - n0 @ n1.T, 0.0, 2.0)
    top = c.max() if scale == "max" else c.mean()
    return c / top if top > 0 else c


def solve(
    x0: np.ndarray,
    x1: np.ndarray,
    *,
    epsilon: float = 0.1,
    cost: str = "euclidean",
    scale: str = "max",
    max_iter: int = 1000,
    stop_thr: float = 1e-6,
    log_domain: bool = False,
) -> Coupling:
    """Entropic OT plan between two cell sets with uniform weights.

    Parameters
    ----------
    x0 : ndarray, shape (n0, n_genes)
        Control cells.
    x1 : ndarray, shape (n1, n_genes)
        Perturbed cells.
    log_domain : bool
        Log-domain Sinkhorn: slower, but it never underflows at small ``epsilon``.
    """
    import ot
    from threadpoolctl import threadpool_limits

    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    # Multithreaded BLAS on these small matrices fights torch's spinning OpenMP threads
    # (100x slower measured); one thread is fastest up to the 512-cell minibatches we use.
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported by `converged`
        c = cost_matrix(x0, x1, cost=cost, scale=scale)
        a = np.full(c.shape[0], 1.0 / c.shape[0])
        b = np.full(c.shape[1], 1.0 / c.shape[1])
        plan, log = ot.sinkhorn(
            a,
            b,
            c,
            reg=epsilon,
            numItermax=max_iter,
            stopThr=stop_thr,
            log=True,
            method="sinkhorn_log" if log_domain else "sinkhorn",
        )
    err = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    # POT's log["niter"] is the last loop index, so it cannot tell convergence; its error is.
    errors = log.get("err", [])
    converged = bool(errors) and float(errors[-1]) < stop_thr
    return Coupling(
        plan, c, float(err), converged, int(log.get("niter", max_iter)) + 1, epsilon, cost
    )


def sample_pairs(
    coupling: Coupling, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` pairs ``(i, j)`` from the plan as a joint distribution."""
    p = coupling.plan.ravel()
    flat = rng.choice(p.size, size=n, p=p / p.sum())
    return np.divmod(flat, coupling.plan.shape[1])


def random_pairs(
    n0: int, n1: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The ablation: ``n`` pairs drawn from the independent (uniform) coupling."""
    return rng.integers(0, n0, size=n), rng.integers(0, n1, size=n)


def pair_condition(
    x0: np.ndarray,
    x1: np.ndarray,
    rng: np.random.Generator,
    *,
    pairing: str = "ot",
    batch_size: int = 512,
    **solve_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs for one condition, one per perturbed cell on average, minibatched by ``batch_size``.

    Perturbed cells are shuffled into chunks of at most ``batch_size``; each chunk is
    coupled with as many control cells drawn without replacement (all when fewer), so
    memory is bounded by ``batch_size**2``. Returns indices into ``x0`` and ``x1``.
    """
    n0, n1 = len(x0), len(x1)
    if pairing == "random":
        return random_pairs(n0, n1, n1, rng)
    if pairing != "ot":
        raise ValueError(f"pairing must be 'ot' or 'random', got {pairing!r}")
    order = rng.permutation(n1)
    idx0, idx1 = [], []
    for start in range(0, n1, batch_size):
        j = order[start : start + batch_size]
        i = rng.permutation(n0)[: min(n0, batch_size)]
        coupling = solve(x0[i], x1[j], **solve_kwargs)
        pi, pj = sample_pairs(coupling, len(j), rng)
        idx0.append(i[pi])
        idx1.append(j[pj])
    return np.concatenate(idx0), np.concatenate(idx1)


def pca_features(x: np.ndarray, n_pcs: int = 50, *, seed: int = 0, max_cells: int = 20_000):
    """Cells on their first ``n_pcs`` principal components (fitted on at most ``max_cells``
    cells), the space the OT cost is measured in with ``space="pca"``: it keeps the
    variation shared by genes and drops most of the per-gene sampling noise that dominates
    distances between sparse single cells."""
    from sklearn.decomposition import PCA

    n_pcs = int(min(n_pcs, x.shape[1], x.shape[0] - 1))
    if n_pcs < 1:
        return np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    n = len(x)
    fit_rows = np.sort(rng.choice(n, max_cells, replace=False)) if n > max_cells else np.arange(n)
    pca = PCA(n_components=n_pcs, svd_solver="randomized", random_state=seed).fit(x[fit_rows])
    chunk = 8192  # rows made dense at a time (``x`` may be a sparse `data.Expression`)
    return np.concatenate(
        [pca.transform(x[s : s + chunk]).astype(np.float32) for s in range(0, n, chunk)]
    )
