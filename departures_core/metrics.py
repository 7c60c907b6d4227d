"""Distribution- and mean-level metrics comparing predicted and observed cells.

All metrics are pure functions of ``(n_cells, n_genes)`` arrays (dense numpy or
scipy sparse, densified to float64). Invalid input raises :class:`MetricInputError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

METRIC_NAMES: tuple[str, ...] = (
    "e_distance",
    "e_distance_de20",
    "e_distance_de40",
    "emd",
    "emd_de20",
    "emd_de40",
    "activation_pcc",
    "pearson_delta",
    "pearson_delta_de20",
    "pearson_delta_pooled",
    "pearson_delta_pooled_de20",
    "mmd",
    "e_distance_pca_sq",
)
LOWER_IS_BETTER: dict[str, bool] = {
    name: not (name.startswith("pearson") or name.endswith("pcc")) for name in METRIC_NAMES
}

_CHUNK = 2048


class MetricInputError(ValueError):
    """Raised when a metric receives arrays of the wrong shape, size or content."""


def _as_2d(x, name: str, *, min_cells: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float64 ``(n_cells, n_genes)`` array or raise."""
    if sp.issparse(x):
        x = x.toarray()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricInputError(f"{name} must be 2-D (cells x genes), got shape {arr.shape}")
    if arr.shape[0] < min_cells:
        raise MetricInputError(
            f"{name} needs at least {min_cells} cell(s), got {arr.shape[0]} (shape {arr.shape})"
        )
    if arr.shape[1] == 0:
        raise MetricInputError(f"{name} has no genes (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name} contains NaN or infinite values")
    return arr


def _check_genes(**arrays: np.ndarray) -> None:
    """Raise if the arrays do not all have the same number of gene columns."""
    widths = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(widths.values())) > 1:
        raise MetricInputError(f"gene counts differ between inputs: {widths}")


def _pair(x, y, *, min_cells: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Validate two cell sets ``x`` and ``y`` with the same genes."""
    x, y = _as_2d(x, "x", min_cells=min_cells), _as_2d(y, "y", min_cells=min_cells)
    _check_genes(x=x, y=y)
    return x, y


def _block_sums(
    a: np.ndarray, b: np.ndarray, fns: Sequence[Callable], *, same: bool = False
) -> np.ndarray:
    """Sum ``fn(D)`` over all pairs for each ``fn``, D the squared Euclidean distances.

    Uses the Gram identity in row chunks of ``a``; ``same=True`` (``a is b``) sets
    the diagonal of D to exactly 0. Returns an array of shape ``(len(fns),)``.
    """
    sq_b = np.einsum("ij,ij->i", b, b)
    totals = np.zeros(len(fns))
    for start in range(0, a.shape[0], _CHUNK):
        blk = a[start : start + _CHUNK]
        d = np.einsum("ij,ij->i", blk, blk)[:, None] + sq_b[None, :] - 2.0 * (blk @ b.T)
        np.maximum(d, 0.0, out=d)
        if same:
            rows = np.arange(blk.shape[0])
            d[rows, rows + start] = 0.0
        totals += [float(fn(d).sum()) for fn in fns]
    return totals


def e_distance(x, y) -> float:
    """Energy distance of the Departures paper (Euclidean, unbiased within-group).

    ``sqrt(2 mean_ij ||x_i - y_j|| - mean_{i<j} ||x_i - x_j|| - mean_{i<j} ||y_i - y_j||)``;
    a tiny negative value under the root is clipped to 0.

    Parameters
    ----------
    x, y : array-like, shapes (n_x, n_genes) and (n_y, n_genes), n_x, n_y >= 2
    """
    x, y = _pair(x, y, min_cells=2)
    center = np.concatenate([x, y]).mean(axis=0)  # reduces Gram-identity cancellation
    x, y = x - center, y - center
    (sxy,) = _block_sums(x, y, [np.sqrt])
    (sxx,) = _block_sums(x, x, [np.sqrt], same=True)
    (syy,) = _block_sums(y, y, [np.sqrt], same=True)
    nx, ny = x.shape[0], y.shape[0]
    val = 2.0 * sxy / (nx * ny) - sxx / (nx * (nx - 1)) - syy / (ny * (ny - 1))
    return float(np.sqrt(max(val, 0.0)))


def e_distance_pca_sq(x, y, *, n_comps: int = 50, pca_fit=None) -> float:
    """Squared-distance energy distance in PCA space (scPerturb / pertpy 2023).

    ``2 mean_ij ||x_i - y_j||^2 - mean_ij ||x_i - x_j||^2 - mean_ij ||y_i - y_j||^2``
    with within-group means over all pairs (diagonal included). Algebraically this
    equals ``2 ||mean(x) - mean(y)||^2`` in PCA space, so it is blind to a change
    of spread that leaves the mean unchanged.

    Parameters
    ----------
    x, y : array-like, shapes (n_x, n_genes) and (n_y, n_genes)
    n_comps : int
        Components, capped at ``min(n_x + n_y - 1, n_genes)``.
    pca_fit : object with ``.transform``, optional
        Pre-fitted PCA; otherwise sklearn PCA is fitted on ``concat(x, y)``.
    """
    x, y = _pair(x, y)
    if pca_fit is None:
        from sklearn.decomposition import PCA

        both = np.concatenate([x, y])
        k = min(int(n_comps), both.shape[0] - 1, both.shape[1])
        if k < 1:
            raise MetricInputError(f"cannot fit PCA with {k} components (n_comps={n_comps})")
        pca_fit = PCA(n_components=k, random_state=0).fit(both)
    px = np.asarray(pca_fit.transform(x), dtype=np.float64)
    py = np.asarray(pca_fit.transform(y), dtype=np.float64)

    def mean_sq(a: np.ndarray, b: np.ndarray) -> float:
        # mean_ij ||a_i - b_j||^2 = mean ||a||^2 + mean ||b||^2 - 2 mean(a).mean(b)
        return float((a * a).sum(1).mean() + (b * b).sum(1).mean() - 2.0 * a.mean(0) @ b.mean(0))

    return 2.0 * mean_sq(px, py) - mean_sq(px, px) - mean_sq(py, py)


def emd(x, y) -> float:
    """Mean over genes of the 1-D Wasserstein-1 distance between x[:, g] and y[:, g].

    Vectorised equivalent of looping ``scipy.stats.wasserstein_distance``:
    ``sum_k |F_x(v_k) - F_y(v_k)| (v_{k+1} - v_k)`` over the pooled sorted values
    ``v`` of each gene. Sample sizes may differ.

    Parameters
    ----------
    x, y : array-like, shapes (n_x, n_genes) and (n_y, n_genes)
    """
    x, y = _pair(x, y)
    nx, ny = x.shape[0], y.shape[0]
    pooled = np.concatenate([x, y])
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    from_x = order < nx
    # Within a run of tied values the deltas are 0, so the partial counts there
    # do not matter; at each run's end the cumsums equal the 'right' CDF counts.
    cdf_x = np.cumsum(from_x, axis=0)[:-1] / nx
    cdf_y = np.cumsum(~from_x, axis=0)[:-1] / ny
    per_gene = (np.abs(cdf_x - cdf_y) * np.diff(values, axis=0)).sum(axis=0)
    return float(per_gene.mean())


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D vectors; nan if either has zero variance or < 2 entries."""
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0.0:
        return float("nan")
    return float(np.clip((a * b).sum() / denom, -1.0, 1.0))


def activation_pcc(pred, obs) -> float:
    """Pearson r between per-gene fractions of cells with value > 0 in pred and obs.

    Parameters
    ----------
    pred, obs : array-like, shapes (n_pred, n_genes) and (n_obs, n_genes)

    Returns
    -------
    float
        nan if either fraction vector has zero variance.
    """
    pred = _as_2d(pred, "pred")
    obs = _as_2d(obs, "obs")
    _check_genes(pred=pred, obs=obs)
    return _pearson((pred > 0).mean(axis=0), (obs > 0).mean(axis=0))


def pearson_delta(pred, obs, ctrl) -> float:
    """Pearson r of ``mean(pred) - mean(ctrl)`` vs ``mean(obs) - mean(ctrl)`` over genes.

    Parameters
    ----------
    pred, obs, ctrl : array-like, shapes (n_pred | n_obs | n_ctrl, n_genes)
        ``ctrl`` may also be a reference mean, shape (n_genes,) or (1, n_genes): the
        Systema-style `pearson_delta_pooled` centres on the pooled perturbed cells' mean.

    Returns
    -------
    float
        nan if either delta vector has zero variance.
    """
    pred = _as_2d(pred, "pred")
    obs = _as_2d(obs, "obs")
    ctrl = _as_2d(ctrl, "ctrl")
    _check_genes(pred=pred, obs=obs, ctrl=ctrl)
    base = ctrl.mean(axis=0)
    return _pearson(pred.mean(axis=0) - base, obs.mean(axis=0) - base)


def mmd(x, y, *, gammas: Sequence[float] = (2, 1, 0.5, 0.1, 0.01, 0.005)) -> float:
    """RBF-kernel MMD^2 (biased V-statistic, as CellOT/CellFlow), averaged over gammas.

    ``mean k(x, x) + mean k(y, y) - 2 mean k(x, y)`` with ``k = exp(-gamma ||a - b||^2)``.

    Parameters
    ----------
    x, y : array-like, shapes (n_x, n_genes) and (n_y, n_genes)
    gammas : sequence of float
        Kernel bandwidths (non-empty).
    """
    x, y = _pair(x, y)
    if len(gammas) == 0:
        raise MetricInputError("mmd needs at least one gamma")
    fns = [lambda d, g=float(g): np.exp(-g * d) for g in gammas]
    kxx = _block_sums(x, x, fns, same=True) / x.shape[0] ** 2
    kyy = _block_sums(y, y, fns, same=True) / y.shape[0] ** 2
    kxy = _block_sums(x, y, fns) / (x.shape[0] * y.shape[0])
    return float(np.mean(kxx + kyy - 2.0 * kxy))


def top_de_genes(
    adata, *, groupby: str, group, reference, n: int = 40, method: str = "t-test"
) -> list[str]:
    """Top-n DE genes of ``group`` vs ``reference`` ranked by |score| (scanpy).

    Runs ``sc.tl.rank_genes_groups`` on a copy restricted to the two groups, on
    ``.X`` (assumed log-normalised); the caller's AnnData is never modified. Genes
    with nan scores (e.g. zero variance) rank last.

    Parameters
    ----------
    adata : anndata.AnnData, shape (n_cells, n_genes)
    groupby : str
        Column of ``adata.obs`` holding the group labels.
    group, reference
        Labels of the tested group and the reference group.
    n : int
        Number of gene names returned (at most ``n_genes``).
    method : str
        Any scanpy ``rank_genes_groups`` method.

    Returns
    -------
    list of str
    """
    import scanpy as sc

    if groupby not in adata.obs.columns:
        raise MetricInputError(f"groupby column {groupby!r} not in adata.obs")
    labels = adata.obs[groupby].astype(str)
    group, reference = str(group), str(reference)
    for name, lab in (("group", group), ("reference", reference)):
        count = int((labels == lab).sum())
        if count < 2:
            raise MetricInputError(f"{name} {lab!r} has {count} cell(s) in {groupby!r}; need 2")
    mask = labels.isin([group, reference]).to_numpy()
    sub = adata[mask].copy()
    sub.obs[groupby] = pd.Categorical(labels.to_numpy()[mask], categories=[group, reference])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sc.tl.rank_genes_groups(
            sub,
            groupby=groupby,
            groups=[group],
            reference=reference,
            method=method,
            n_genes=sub.n_vars,
            use_raw=False,
        )
    res = sub.uns["rank_genes_groups"]
    names = np.asarray(res["names"][group]).astype(str)
    scores = np.abs(np.asarray(res["scores"][group], dtype=np.float64))
    scores[~np.isfinite(scores)] = -np.inf
    order = np.argsort(-scores, kind="stable")
    return names[order][: int(n)].tolist()


def _de_columns(genes: Sequence[str], de_genes: Sequence[str], k: int) -> np.ndarray:
    """Column indices of the first ``k`` of ``de_genes`` that occur in ``genes``."""
    index = {g: i for i, g in enumerate(genes)}
    cols = [index[g] for g in de_genes if g in index]
    return np.asarray(cols[:k], dtype=int)


def condition_metrics(
    pred, obs, ctrl, *, genes=None, de_genes=None, means_from=None, pooled=None
) -> dict[str, float]:
    """All metrics of one condition, keyed exactly by :data:`METRIC_NAMES`.

    Parameters
    ----------
    pred, obs, ctrl : array-like, shapes (n_pred | n_obs | n_ctrl, n_genes)
        ``pred`` and ``obs`` need at least 2 cells each.
    genes : sequence of str, length n_genes, optional
        Column names; required when ``de_genes`` is given.
    de_genes : sequence of str, optional
        DE genes, top first. The ``*_de20`` / ``*_de40`` metrics use the first
        20 / 40 of them present in ``genes``; nan when None or none present.
    means_from : array-like, shape (n, n_genes), optional
        A larger sample of the same prediction, for the metrics of per-gene means
        (``pearson_delta``, ``pearson_delta_de20``, ``activation_pcc``): a generative
        model's mean is estimated with less sampling noise from many cells, while the
        distances compare ``pred``, a sample the size of the baselines'.
    pooled : array-like, shape (n_genes,), optional
        The mean of the cell type's training perturbations' cells. ``pearson_delta_pooled``
        (and its top-20 DE form) centre the changes on it instead of on the controls
        (Systema, Vinas Torne et al. 2025): what every perturbation shares - the systematic
        difference between perturbed and control cells - then earns nothing. nan when None.

    Returns
    -------
    dict of str to float
    """
    pred = _as_2d(pred, "pred", min_cells=2)
    obs = _as_2d(obs, "obs", min_cells=2)
    ctrl = _as_2d(ctrl, "ctrl")
    _check_genes(pred=pred, obs=obs, ctrl=ctrl)
    if genes is not None and len(genes) != pred.shape[1]:
        raise MetricInputError(f"len(genes)={len(genes)} but arrays have {pred.shape[1]} genes")
    if de_genes is not None and genes is None:
        raise MetricInputError("genes (column names) are required when de_genes is given")
    means = pred if means_from is None else _as_2d(means_from, "means_from", min_cells=2)
    _check_genes(pred=pred, means_from=means)
    out = {name: float("nan") for name in METRIC_NAMES}
    out["e_distance"] = e_distance(pred, obs)
    out["emd"] = emd(pred, obs)
    out["activation_pcc"] = activation_pcc(means, obs)
    out["pearson_delta"] = pearson_delta(means, obs, ctrl)
    out["mmd"] = mmd(pred, obs)
    out["e_distance_pca_sq"] = e_distance_pca_sq(pred, obs)
    if de_genes is not None:
        for k in (20, 40):
            cols = _de_columns(list(genes), list(de_genes), k)
            if cols.size == 0:
                continue
            out[f"e_distance_de{k}"] = e_distance(pred[:, cols], obs[:, cols])
            out[f"emd_de{k}"] = emd(pred[:, cols], obs[:, cols])
        cols = _de_columns(list(genes), list(de_genes), 20)
        if cols.size:
            out["pearson_delta_de20"] = pearson_delta(means[:, cols], obs[:, cols], ctrl[:, cols])
    if pooled is not None:
        ref = np.asarray(pooled, dtype=np.float64).reshape(1, -1)
        _check_genes(pred=pred, pooled=ref)
        out["pearson_delta_pooled"] = pearson_delta(means, obs, ref)
        cols = _de_columns(list(genes), list(de_genes), 20) if de_genes is not None else []
        if len(cols):
            out["pearson_delta_pooled_de20"] = pearson_delta(
                means[:, cols], obs[:, cols], ref[:, cols]
            )
    return out
