"""Activation states: which genes are on (expression > 0) in what fraction of cells, which
genes a perturbation switches on or off, and whether the prediction catches them.

The discrete (CTMC) bridge of Departures models exactly this on/off state; these tables
show how well it does, gene by gene. Everything here is plain numpy/pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import ConfigError

SWITCH_THRESHOLD = 0.2  # a gene switches when its fraction of active cells moves this much


def fraction_active(x: np.ndarray) -> np.ndarray:
    """Per gene, the fraction of cells (rows of ``x``) with expression > 0."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"Need a (cells x genes) array with at least one cell, got {x.shape}.")
    return (x > 0).mean(axis=0)


def activation_table(cells, *, threshold: float = SWITCH_THRESHOLD) -> pd.DataFrame:
    """One row per gene of a condition (`explore.ConditionCells`).

    Columns: ``gene``; ``control``, ``observed``, ``predicted`` (fractions of active cells);
    ``observed_change`` and ``predicted_change`` (against control); ``switch`` ("on", "off"
    or "" — the observed change reaches ``threshold``); ``predicted_switch`` (the same rule
    on the prediction); ``caught`` (the prediction switches the gene the way it was
    observed to). Rows are sorted by |observed_change|, largest first.
    """
    if not 0 < threshold < 1:
        raise ConfigError(
            f"The switch threshold is a change in fraction in (0, 1), got {threshold}."
        )
    ctrl = fraction_active(cells.control)
    obs = fraction_active(cells.observed)
    pred = fraction_active(cells.predicted)
    table = pd.DataFrame(
        {
            "gene": cells.genes,
            "control": ctrl,
            "observed": obs,
            "predicted": pred,
            "observed_change": obs - ctrl,
            "predicted_change": pred - ctrl,
        }
    )
    table["switch"] = _switch(table["observed_change"].to_numpy(), threshold)
    table["predicted_switch"] = _switch(table["predicted_change"].to_numpy(), threshold)
    table["caught"] = (table["switch"] != "") & (table["switch"] == table["predicted_switch"])
    order = np.argsort(-np.abs(table["observed_change"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def _switch(change: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(change >= threshold, "on", np.where(change <= -threshold, "off", ""))


def switch_summary(table: pd.DataFrame) -> dict[str, float]:
    """Headline numbers of an `activation_table`.

    ``switched_on`` / ``switched_off``: genes observed to switch; ``caught``: of those, how
    many the prediction switches the same way (``recall`` = caught / switched); ``false``:
    genes the prediction switches that were not observed to (``precision`` = caught /
    predicted switches); ``activation_pcc``: Pearson r of observed and predicted fractions.
    """
    real = table["switch"] != ""
    called = table["predicted_switch"] != ""
    caught = int(table["caught"].sum())
    return {
        "switched_on": int((table["switch"] == "on").sum()),
        "switched_off": int((table["switch"] == "off").sum()),
        "caught": caught,
        "recall": caught / int(real.sum()) if real.any() else float("nan"),
        "false": int((called & ~real).sum()),
        "precision": caught / int(called.sum()) if called.any() else float("nan"),
        "activation_pcc": _pearson(
            table["observed"].to_numpy(float), table["predicted"].to_numpy(float)
        ),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def switch_matrix(cells_list, *, n_genes: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Change in fraction of active cells (vs control), observed and predicted, for the
    ``n_genes`` genes that switch most across the given conditions.

    Returns two frames with the same rows (conditions, by label) and columns (genes, by
    largest |observed change| anywhere): ``(observed, predicted)``.
    """
    if not cells_list:
        raise ConfigError("Pick at least one perturbation.")
    if n_genes < 1:
        raise ConfigError(f"n_genes must be >= 1, got {n_genes}.")
    genes = cells_list[0].genes
    obs, pred, labels = [], [], []
    for c in cells_list:
        ctrl = fraction_active(c.control)
        obs.append(fraction_active(c.observed) - ctrl)
        pred.append(fraction_active(c.predicted) - ctrl)
        labels.append(c.perturbation + (" (held out)" if c.held_out else ""))
    obs, pred = np.array(obs), np.array(pred)
    top = np.argsort(-np.abs(obs).max(axis=0), kind="stable")[: min(n_genes, len(genes))]
    cols = [genes[i] for i in top]
    return (
        pd.DataFrame(obs[:, top], index=labels, columns=cols),
        pd.DataFrame(pred[:, top], index=labels, columns=cols),
    )
