"""Gene–gene graph and gene node features built from the control cells."""

from __future__ import annotations

import numpy as np


def coexpression_edges(
    x_ctrl: np.ndarray, *, threshold: float = 0.3, max_neighbors: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Edges between genes whose Pearson correlation among control cells exceeds ``threshold``.

    Parameters
    ----------
    x_ctrl : ndarray, shape (n_cells, n_genes)

    Returns
    -------
    edge_index : ndarray, shape (2, n_edges)
        ``(source, target)``; each gene keeps its ``max_neighbors`` strongest partners.
    weight : ndarray, shape (n_edges,)
        ``|r|`` normalised to sum to 1 over each target's incoming edges (mean aggregation).
    """
    x = np.asarray(x_ctrl, dtype=np.float64)
    sd = x.std(0)
    z = np.where(sd > 0, (x - x.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)
    r = np.abs(z.T @ z) / max(len(x), 1)
    np.fill_diagonal(r, 0.0)
    r[r <= threshold] = 0.0
    k = min(max_neighbors, r.shape[0] - 1)
    if k <= 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(-r, k - 1, axis=1)[:, :k]  # per target row, strongest sources
    tgt = np.repeat(np.arange(r.shape[0]), k)
    src = top.ravel()
    w = r[tgt, src]
    keep = w > 0
    src, tgt, w = src[keep], tgt[keep], w[keep]
    norm = np.bincount(tgt, weights=w, minlength=r.shape[0])
    w = w / norm[tgt]
    return np.stack([src, tgt]).astype(np.int64), w.astype(np.float32)


def gene_features(x_ctrl: np.ndarray, *, n_pcs: int = 16) -> np.ndarray:
    """Per-gene features from control cells: mean, sd, fraction active, PCA loadings.

    Returns
    -------
    ndarray, shape (n_genes, 3 + n_pcs), standardised per feature.
    """
    x = np.asarray(x_ctrl, dtype=np.float64)
    centred = x - x.mean(0)
    n_pcs = max(0, min(n_pcs, min(x.shape) - 1))
    if n_pcs:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        loadings = (vt[:n_pcs] * s[:n_pcs, None]).T / np.sqrt(max(len(x) - 1, 1))
    else:
        loadings = np.zeros((x.shape[1], 0))
    feats = np.column_stack([x.mean(0), x.std(0), (x > 0).mean(0), loadings])
    sd = feats.std(0)
    return ((feats - feats.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
