"""Plotly figures and the small tables behind them. Never imports streamlit."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly import colors
from plotly.subplots import make_subplots

from .io import ObsKeys

CONTROL_COLOUR = "#9e9e9e"
PALETTE = colors.qualitative.Dark24 + colors.qualitative.Light24
MAX_CATEGORIES = 40  # beyond this, the smallest categories are drawn together as "other"
LAYOUT = {"template": "plotly_white", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}}


# ------------------------------------------------------------------ tables
def cell_counts(adata: ad.AnnData, obs_keys: ObsKeys) -> pd.DataFrame:
    """Cells per perturbation (rows) and cell type (columns), with a ``total`` column.

    The control comes first, then perturbations by decreasing total.
    """
    pert = adata.obs[obs_keys.perturbation_key].astype(str)
    if obs_keys.cell_type_key:
        ctype = adata.obs[obs_keys.cell_type_key].astype(str)
        table = pd.crosstab(pert, ctype)
    else:
        table = pert.value_counts().to_frame("cells")
    table.columns = [str(c) for c in table.columns]
    table.insert(0, "total", table.sum(axis=1))
    table = table.sort_values("total", ascending=False)
    order = [obs_keys.control] + [p for p in table.index if p != obs_keys.control]
    table = table.loc[[p for p in order if p in table.index]]
    table.index.name = "perturbation"
    table.columns.name = None
    return table


def gene_values(adata: ad.AnnData, rows: np.ndarray, gene: str) -> np.ndarray:
    """One gene's expression in ``rows`` of ``adata``, shape (len(rows),)."""
    x = adata[rows, gene].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x).ravel()


def genes_by_variance(adata: ad.AnnData, *, max_cells: int = 20_000) -> list[str]:
    """Gene names, most variable first (on up to ``max_cells`` evenly spaced cells)."""
    x = adata.X[:: max(1, adata.n_obs // max_cells)]
    if hasattr(x, "toarray"):
        mean = np.asarray(x.mean(axis=0)).ravel()
        var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean**2
    else:
        var = np.asarray(x).var(axis=0)
    return [str(adata.var_names[i]) for i in np.argsort(-var, kind="stable")]


def dataset_summary(adata: ad.AnnData, obs_keys: ObsKeys) -> dict[str, str]:
    """Headline numbers of a dataset, formatted for display."""
    pert = adata.obs[obs_keys.perturbation_key].astype(str)
    out = {
        "Cells": f"{adata.n_obs:,}",
        "Genes": f"{adata.n_vars:,}",
        "Perturbations": f"{pert[pert != obs_keys.control].nunique():,}",
        "Control cells": f"{int((pert == obs_keys.control).sum()):,}",
    }
    if obs_keys.cell_type_key:
        out["Cell types"] = str(adata.obs[obs_keys.cell_type_key].nunique())
    return out


# ------------------------------------------------------------------ figures
def cell_count_bar(table: pd.DataFrame, *, top: int = 60) -> go.Figure:
    """Stacked bars: cells per perturbation, one colour per cell type (``cell_counts`` table)."""
    table = table.head(top)
    parts = [c for c in table.columns if c != "total"]
    fig = go.Figure()
    for i, col in enumerate(parts):
        fig.add_bar(x=table.index, y=table[col], name=col, marker_color=PALETTE[i % len(PALETTE)])
    title = "Cells per perturbation" + (f" (largest {top})" if len(table) == top else "")
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title=None,
        yaxis_title="cells",
        legend_title="cell type",
        height=380,
        **LAYOUT,
    )
    fig.update_xaxes(tickangle=-60)
    return fig


def _lump(values: pd.Series, keep: str | None) -> pd.Series:
    counts = values.value_counts()
    if len(counts) <= MAX_CATEGORIES:
        return values
    top = set(counts.index[: MAX_CATEGORIES - 1]) | ({keep} if keep else set())
    return values.where(values.isin(top), "other")


def embedding_scatter(
    coords: np.ndarray,
    values,
    *,
    label: str,
    categorical: bool,
    highlight: str | None = None,
    title: str = "UMAP",
) -> go.Figure:
    """Cells on a 2-D embedding, coloured by a category (``highlight`` drawn in grey,
    underneath) or by a number (e.g. a gene's expression, low values drawn first).

    coords : array, shape (n_cells, 2)
    values : array-like, shape (n_cells,)
    """
    fig = go.Figure()
    marker = {"size": 4, "opacity": 0.8}
    if categorical:
        v = _lump(pd.Series(np.asarray(values).astype(str)), highlight)
        cats = sorted(v.unique(), key=lambda c: (c != highlight, c == "other", c))
        for i, cat in enumerate(cats):
            m = (v == cat).to_numpy()
            colour = CONTROL_COLOUR if cat in (highlight, "other") else PALETTE[i % len(PALETTE)]
            fig.add_trace(
                go.Scattergl(
                    x=coords[m, 0],
                    y=coords[m, 1],
                    mode="markers",
                    name=f"{cat} ({m.sum():,})",
                    marker={**marker, "color": colour},
                    hovertemplate=f"{label}: {cat}<extra></extra>",
                )
            )
    else:
        v = np.asarray(values, dtype=float)
        order = np.argsort(v, kind="stable")
        fig.add_trace(
            go.Scattergl(
                x=coords[order, 0],
                y=coords[order, 1],
                mode="markers",
                marker={
                    **marker,
                    "color": v[order],
                    "colorscale": "Viridis",
                    "colorbar": {"title": label},
                },
                hovertemplate=f"{label}: %{{marker.color:.2f}}<extra></extra>",
                showlegend=False,
            )
        )
    fig.update_layout(
        title=title, height=560, legend={"itemsizing": "constant", "title": label}, **LAYOUT
    )
    fig.update_xaxes(title="UMAP 1", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(title="UMAP 2", showticklabels=False, showgrid=False, zeroline=False)
    return fig


def loss_curves(history: pd.DataFrame, *, smooth: int = 20, max_points: int = 4000) -> go.Figure:
    """Both training losses against the step: raw (faint) and a running mean.

    history : DataFrame with columns ``step``, ``epoch``, ``loss_cont``, ``loss_disc``
    Long histories are thinned to about ``max_points`` points after smoothing.
    """
    history = history.reset_index(drop=True)
    for name in ("loss_cont", "loss_disc"):
        history[f"{name}_mean"] = history[name].astype(float).rolling(smooth, min_periods=1).mean()
    history = history.iloc[:: max(1, -(-len(history) // max_points))]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Expression (Brownian bridge, masked MSE)", "On/off (CTMC bridge, BCE)"),
    )
    for col, (name, colour) in enumerate([("loss_cont", "#1f77b4"), ("loss_disc", "#d62728")], 1):
        if history.empty or history[name].isna().all():
            continue
        y = history[name].astype(float)
        fig.add_scatter(
            x=history["step"],
            y=y,
            mode="lines",
            line={"color": colour, "width": 1},
            opacity=0.3,
            name=f"{name} (per step)",
            showlegend=False,
            row=1,
            col=col,
        )
        fig.add_scatter(
            x=history["step"],
            y=history[f"{name}_mean"],
            mode="lines",
            line={"color": colour, "width": 2.5},
            showlegend=False,
            name=f"{name} (mean of {smooth})",
            row=1,
            col=col,
        )
        fig.update_xaxes(title="step", row=1, col=col)
    fig.update_yaxes(title="loss", row=1, col=1)
    fig.update_layout(height=320, **LAYOUT)
    return fig
