"""Scanpy preprocessing: counts -> log-normalised; gene selection keeping perturbed genes."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

from . import keys


def is_counts(adata: ad.AnnData, *, n_check: int = 2000) -> bool:
    """True when ``X`` looks like raw counts: non-negative integers with large values."""
    if adata.X is None:
        return False
    x = adata.X[: min(n_check, adata.n_obs)]
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if values.size == 0:
        return False
    return bool(np.all(np.mod(values, 1) == 0) and values.max() > 30)


def perturbed_genes(labels, *, control: str) -> list[str]:
    """Gene names named by the perturbation labels (``A+B`` gives A and B), control excluded."""
    genes: set[str] = set()
    for label in set(map(str, labels)):
        if label != control:
            genes.update(t for t in label.split(keys.COMBINATION_DELIMITER) if t)
    return sorted(genes)


def preprocess(
    adata: ad.AnnData,
    *,
    perturbation_key: str,
    control: str,
    n_genes: int = 2000,
    copy: bool = False,
) -> ad.AnnData | None:
    """Log-normalise counts and keep ``n_genes`` genes: perturbed genes first, then HVGs.

    Counts (detected with `is_counts`) go through ``normalize_total`` and ``log1p``; the
    counts are kept in ``layers['counts']``. Log-normalised input is used as it is.
    Writes ``adata.uns['departures_pp']`` with what was done.
    """
    adata = adata.copy() if copy else adata
    counts = is_counts(adata)
    if counts:
        import scanpy as sc

        adata.layers[keys.COUNTS_LAYER] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    adata.X = (
        sp.csr_matrix(adata.X, dtype=np.float32)
        if sp.issparse(adata.X)
        else (np.asarray(adata.X, dtype=np.float32))
    )
    forced = [
        g
        for g in perturbed_genes(adata.obs[perturbation_key], control=control)
        if g in adata.var_names
    ]
    if adata.n_vars > n_genes:
        mask = _select_genes(adata, forced, n_genes)
        adata._inplace_subset_var(mask)
    adata.uns["departures_pp"] = {
        "input_was_counts": counts,
        "n_genes": int(adata.n_vars),
        "forced_genes": forced,
    }
    return adata if copy else None


def _select_genes(adata: ad.AnnData, forced: list[str], n_genes: int) -> np.ndarray:
    import scanpy as sc

    n_hvg = max(n_genes - len(forced), 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hvg = sc.pp.highly_variable_genes(
                adata, n_top_genes=max(n_hvg, 1), flavor="seurat", inplace=False
            )
        ranked = hvg["dispersions_norm"].to_numpy(dtype=float)
    except IndexError:  # scanpy 1.11 when no gene varies: keep the first genes
        ranked = np.full(adata.n_vars, np.nan)
    ranked = np.nan_to_num(ranked, nan=-np.inf)
    forced_mask = adata.var_names.isin(forced)
    order = np.argsort(-ranked, kind="stable")
    order = order[~forced_mask[order]][:n_hvg]  # forced genes are in already
    mask = forced_mask.copy()
    mask[order] = True
    return mask
