"""Calibration: are predicted cells distributed like the observed ones, trained and held out?

A generative model is judged first in distribution. For every condition (training and
held-out) this compares the prediction from the condition's own control cells with the
observed perturbed cells, next to the unchanged controls and the observed cells' own
half-vs-half noise floor, and breaks any gap down into the summaries where a biased
generator shows: active genes per cell, total expression per cell (mean and sd), per-gene
variance and per-gene means.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from . import metrics
from .data import Condition, PerturbationData

COLUMNS = (
    "split",
    "perturbation",
    "cell_type",
    "n_observed",
    "e_distance",
    "e_distance_bridges",
    "e_distance_control",
    "noise_floor",
    "active_genes_pred",
    "active_genes_obs",
    "total_mean_pred",
    "total_mean_obs",
    "total_sd_pred",
    "total_sd_obs",
    "total_bias",
    "variance_ratio",
    "mean_error",
    "mean_error_control",
)
NULL_EFFECT = 0.1  # control e_distance below this: the perturbation changes nothing measurable


def noise_floor(obs: np.ndarray, rng: np.random.Generator) -> float:
    """e_distance between two random halves of the observed cells: what sampling alone gives."""
    order = rng.permutation(len(obs))
    half = len(obs) // 2
    return metrics.e_distance(obs[order[:half]], obs[order[half : 2 * half]])


def variance_ratio(pred: np.ndarray, obs: np.ndarray) -> float:
    """Median over genes (observed variance > 0) of predicted / observed variance."""
    var_obs = obs.var(0)
    keep = var_obs > 1e-12
    if not keep.any():
        return float("nan")
    return float(np.median(pred.var(0)[keep] / var_obs[keep]))


def condition_row(
    pred: np.ndarray, obs: np.ndarray, ctrl: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    """The calibration numbers of one condition (all arrays cells x genes, same genes)."""
    pred, obs, ctrl = (np.asarray(a, dtype=np.float64) for a in (pred, obs, ctrl))
    total_pred, total_obs = pred.sum(1), obs.sum(1)
    mean_obs = obs.mean(0)
    return {
        "n_observed": len(obs),
        "e_distance": metrics.e_distance(pred, obs),
        "e_distance_control": metrics.e_distance(ctrl, obs),
        "noise_floor": noise_floor(obs, rng) if len(obs) >= 4 else float("nan"),
        "active_genes_pred": float((pred > 0).sum(1).mean()),
        "active_genes_obs": float((obs > 0).sum(1).mean()),
        "total_mean_pred": float(total_pred.mean()),
        "total_mean_obs": float(total_obs.mean()),
        "total_sd_pred": float(total_pred.std()),
        "total_sd_obs": float(total_obs.std()),
        "total_bias": float(total_pred.mean() / max(total_obs.mean(), 1e-12) - 1.0),
        "variance_ratio": variance_ratio(pred, obs),
        "mean_error": float(np.abs(pred.mean(0) - mean_obs).mean()),
        "mean_error_control": float(np.abs(ctrl.mean(0) - mean_obs).mean()),
    }


def calibrate(
    data: PerturbationData,
    predict: Callable[[Condition], np.ndarray],
    *,
    min_cells: int = 10,
    seed: int = 0,
    progress: bool = True,
    bridges: Callable[[Condition], np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per condition with at least ``min_cells`` observed cells, training and held out.

    ``predict(condition)`` returns predicted cells started from the condition's controls
    (as `evaluate.model_predictor` does); ``bridges``, the same without the non-responders,
    adds their e_distance (``e_distance_bridges``).
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    rows = []
    usable = [c for c in data.conditions if len(c.perturbed) >= min_cells and len(c.control) >= 2]
    for cond in tqdm(usable, desc="calibrate", disable=not progress):
        scores = condition_row(predict(cond), data.x[cond.perturbed], data.x[cond.control], rng)
        if bridges is not None:
            scores["e_distance_bridges"] = metrics.e_distance(bridges(cond), data.x[cond.perturbed])
        split = "held_out" if cond.held_out else "train"
        rows.append(
            {
                "split": split,
                "perturbation": cond.perturbation,
                "cell_type": cond.cell_type,
                **scores,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Medians per split (rows ``train``, ``train_null``, ``held_out``) of the calibration table.

    ``train_null`` is the training conditions whose control e_distance is below
    `NULL_EFFECT`: perturbations that change nothing, which a faithful model reproduces
    near the noise floor.
    """
    groups = {
        "train": table[table["split"] == "train"],
        "train_null": table[
            (table["split"] == "train") & (table["e_distance_control"] < NULL_EFFECT)
        ],
        "held_out": table[table["split"] == "held_out"],
    }
    numeric = [c for c in COLUMNS if c not in ("split", "perturbation", "cell_type")]
    out = {
        name: {"conditions": len(g), **g[numeric].median().to_dict()}
        for name, g in groups.items()
        if len(g)
    }
    return pd.DataFrame(out).T
