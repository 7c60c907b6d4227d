"""The bridges' spread: where a gene is active, the spread of its generated values is set by
the bridge's noise, not learned (the authors' sigma = 0.2 left it 15-30 % narrower than the
observed on Kang and Zhao; 0.5 still leaves it narrower in most cell types). The
non-responder fit (`calibration.fit_unaffected`) measures, per cell type, the ratio of the
observed to the generated spread of the active values over its training conditions'
validation cells, and every simulation scales the bridges' cells by it around each gene's
mean active value (`scale`)."""

from __future__ import annotations

import numpy as np

MIN_ACTIVE = 10  # active cells a gene needs in both samples for its spread to count


def _active_mean(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which values of ``x`` are active, and per gene their number and mean."""
    active = x > 0
    n = active.sum(0)
    return active, n, np.where(active, x, 0).sum(0) / np.maximum(n, 1)


def active_sd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: the number of cells where it is active and the sd of its active values."""
    x = np.asarray(x, dtype=np.float64)
    active, n, mean = _active_mean(x)
    var = np.where(active, (x - mean) ** 2, 0.0).sum(0) / np.maximum(n - 1, 1)
    return n, np.sqrt(var)


def ratios(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """log(observed / predicted sd of the active values) of each gene active in at least
    `MIN_ACTIVE` cells of both."""
    n_p, sd_p = active_sd(pred)
    n_o, sd_o = active_sd(obs)
    ok = (n_p >= MIN_ACTIVE) & (n_o >= MIN_ACTIVE) & (sd_p > 1e-6) & (sd_o > 1e-6)
    return np.log(sd_o[ok] / sd_p[ok])


def fit(by_cell_type: dict[str, list[np.ndarray]]) -> dict:
    """The spread factor per cell type (``exp`` of the median log ratio over its genes and
    conditions, `ratios`) and over all of them (``"overall"``: a cell type without
    training conditions takes it)."""
    pooled = {ct: np.concatenate(r) for ct, r in by_cell_type.items() if r}
    pooled = {ct: r for ct, r in pooled.items() if len(r)}
    everything = np.concatenate(list(pooled.values())) if pooled else np.zeros(0)
    return {
        "cell_type": {ct: float(np.exp(np.median(r))) for ct, r in pooled.items()},
        "overall": float(np.exp(np.median(everything))) if len(everything) else 1.0,
    }


def factor_for(factors: dict | None, cell_type: str) -> float:
    """The factor a cell type's bridges are scaled by: its own, else the overall one (1 for
    a run fitted without spread)."""
    if not factors:
        return 1.0
    return float(factors["cell_type"].get(cell_type, factors["overall"]))


def scale(x: np.ndarray, factor: float) -> np.ndarray:
    """Cells ``x`` with each gene's active values moved ``factor`` times as far from their
    mean over the cells (zeros stay zeros; an active value stays active)."""
    if factor == 1.0 or len(x) == 0:
        return x
    x = np.asarray(x)
    active, _, mean = _active_mean(x)
    low = np.where(active, x, np.inf).min(0)
    scaled = np.maximum(mean + factor * (x - mean), 0.5 * np.where(np.isfinite(low), low, 0))
    return np.where(active, scaled, 0).astype(x.dtype)
