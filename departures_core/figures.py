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


# ------------------------------------------------------------------ exploration of a run
ROLE_STYLE = {  # how each cell set is drawn on a prediction map
    "control": {"symbol": "circle", "size": 5, "opacity": 0.45},
    "observed": {"symbol": "circle", "size": 6, "opacity": 0.75},
    "predicted": {"symbol": "diamond-open", "size": 7, "opacity": 0.9},
}
METHOD_COLOURS = {
    "departures": "#d62728",
    "control": CONTROL_COLOUR,
    "mean_shift": "#1f77b4",
    "random_pairing": "#ff7f0e",
    "no_discrete": "#9467bd",
}


def _no_ticks(fig: go.Figure, x: str = "UMAP 1", y: str = "UMAP 2") -> None:
    fig.update_xaxes(title=x, showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(title=y, showticklabels=False, showgrid=False, zeroline=False)


def prediction_map(groups: list[tuple[str, str, np.ndarray]], *, title: str) -> go.Figure:
    """Control, observed and predicted cells on one 2-D map.

    groups : ``(perturbation, role, coords)`` with role "control", "observed" or
        "predicted" and coords of shape (n, 2). Control cells are grey; each perturbation
        has one colour, observed cells filled and predicted cells as open diamonds.
    """
    fig = go.Figure()
    perts = list(dict.fromkeys(p for p, role, _ in groups if role != "control"))
    colour = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(perts)}
    order = {"control": 0, "observed": 1, "predicted": 2}
    for pert, role, xy in sorted(groups, key=lambda g: order[g[1]]):
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        style = ROLE_STYLE[role]
        name = f"control ({len(xy):,})" if role == "control" else f"{pert} · {role} ({len(xy):,})"
        fig.add_trace(
            go.Scattergl(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                name=name,
                legendgroup=pert if role != "control" else "control",
                marker={
                    **{k: v for k, v in style.items() if k != "opacity"},
                    "color": CONTROL_COLOUR if role == "control" else colour[pert],
                    "opacity": style["opacity"],
                },
                hovertemplate=f"{name}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title, height=560, legend={"itemsizing": "constant", "title": "cells"}, **LAYOUT
    )
    _no_ticks(fig)
    return fig


def method_bars(scores: pd.DataFrame, metric: str) -> go.Figure:
    """One metric of each method (bars) for each perturbation (groups).

    scores : long frame with columns ``perturbation``, ``method`` and ``metric``.
    """
    if metric not in scores.columns:
        raise KeyError(f"no column {metric!r} in the scores")
    fig = go.Figure()
    for method in dict.fromkeys(scores["method"]):
        part = scores[scores["method"] == method]
        fig.add_bar(
            x=part["perturbation"],
            y=part[metric],
            name=method,
            marker_color=METHOD_COLOURS.get(method, PALETTE[len(fig.data) % len(PALETTE)]),
        )
    lower = not metric.startswith(("pearson", "activation"))
    fig.update_layout(
        barmode="group",
        title=f"{metric} by method ({'lower' if lower else 'higher'} is better)",
        yaxis_title=metric,
        legend_title="method",
        height=360,
        **LAYOUT,
    )
    return fig


def de_changes(changes: pd.DataFrame, *, title: str) -> go.Figure:
    """Observed and predicted change of mean expression (vs control) of the top DE genes.

    changes : `explore.top_changes` frame (gene, observed_change, predicted_change), the
        largest observed change first; drawn top to bottom.
    """
    genes = changes["gene"].tolist()[::-1]
    fig = go.Figure()
    for col, name, colour in (
        ("observed_change", "observed", "#1f77b4"),
        ("predicted_change", "predicted (Departures)", METHOD_COLOURS["departures"]),
    ):
        fig.add_bar(
            y=genes,
            x=changes[col].to_numpy()[::-1],
            orientation="h",
            name=name,
            marker_color=colour,
            hovertemplate="%{y}: %{x:.3f}<extra>" + name + "</extra>",
        )
    fig.update_layout(
        barmode="group",
        title=title,
        xaxis_title="change in mean log-expression vs control",
        height=max(320, 22 * len(genes) + 140),
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        **{**LAYOUT, "margin": {**LAYOUT["margin"], "t": 90}},
    )
    return fig


def gene_distribution(values: dict[str, np.ndarray], gene: str) -> go.Figure:
    """Violins (with box and points' mean) of one gene in each cell set, e.g. control,
    observed and predicted, with the fraction of active cells in the labels."""
    fig = go.Figure()
    colours = {"control": CONTROL_COLOUR, "observed": "#1f77b4"}
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float).ravel()
        active = (v > 0).mean() if len(v) else float("nan")
        fig.add_violin(
            y=v,
            name=f"{name}<br>{active:.0%} active",
            box_visible=True,
            meanline_visible=True,
            points=False,
            spanmode="hard",
            line_color=colours.get(
                name, METHOD_COLOURS["departures"] if "pred" in name else PALETTE[i]
            ),
        )
    fig.update_layout(
        title=f"{gene}: expression per cell",
        yaxis_title=f"{gene} (log-normalised)",
        showlegend=False,
        height=380,
        **LAYOUT,
    )
    return fig


SWITCH_COLOURS = {"on": "#d62728", "off": "#1f77b4", "": "#bdbdbd"}


def activation_scatter(table: pd.DataFrame, *, threshold: float, title: str) -> go.Figure:
    """Per gene, predicted vs observed fraction of active cells (left) and their changes
    against control (right), coloured by the observed switch (`activation.activation_table`)."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Fraction of active cells", "Change against control"),
        horizontal_spacing=0.1,
    )
    names = {"on": "switched on", "off": "switched off", "": "no switch"}
    for switch in ("", "off", "on"):
        part = table[table["switch"] == switch]
        hover = "%{text}<br>observed %{x:.2f}<br>predicted %{y:.2f}<extra></extra>"
        for col, (xc, yc) in enumerate(
            [("observed", "predicted"), ("observed_change", "predicted_change")], 1
        ):
            fig.add_trace(
                go.Scattergl(
                    x=part[xc],
                    y=part[yc],
                    text=part["gene"],
                    mode="markers",
                    name=f"{names[switch]} ({len(part)})",
                    legendgroup=switch or "none",
                    showlegend=col == 1,
                    marker={
                        "color": SWITCH_COLOURS[switch],
                        "size": 5 if switch == "" else 8,
                        "opacity": 0.5 if switch == "" else 0.9,
                    },
                    hovertemplate=hover,
                ),
                row=1,
                col=col,
            )
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        line={"dash": "dot", "color": "black", "width": 1},
        showlegend=False,
        hoverinfo="skip",
        row=1,
        col=1,
    )
    lo = float(min(table["observed_change"].min(), table["predicted_change"].min(), -threshold))
    hi = float(max(table["observed_change"].max(), table["predicted_change"].max(), threshold))
    fig.add_scatter(
        x=[lo, hi],
        y=[lo, hi],
        mode="lines",
        line={"dash": "dot", "color": "black", "width": 1},
        showlegend=False,
        hoverinfo="skip",
        row=1,
        col=2,
    )
    for v in (-threshold, threshold):
        fig.add_vline(x=v, line={"dash": "dash", "color": "#999", "width": 1}, row=1, col=2)
        fig.add_hline(y=v, line={"dash": "dash", "color": "#999", "width": 1}, row=1, col=2)
    fig.update_xaxes(title="observed", row=1, col=1, range=[-0.02, 1.02])
    fig.update_yaxes(title="predicted", row=1, col=1, range=[-0.02, 1.02])
    fig.update_xaxes(title="observed change", row=1, col=2)
    fig.update_yaxes(title="predicted change", row=1, col=2)
    fig.update_layout(
        title=title,
        height=480,
        legend={"title": "observed"},
        **{**LAYOUT, "margin": {**LAYOUT["margin"], "t": 90}},
    )
    return fig


def switch_heatmaps(observed: pd.DataFrame, predicted: pd.DataFrame) -> go.Figure:
    """Change in fraction of active cells, observed (left) and predicted (right): rows
    perturbations, columns genes (`activation.switch_matrix`), one diverging scale."""
    if list(observed.index) != list(predicted.index) or list(observed.columns) != list(
        predicted.columns
    ):
        raise ValueError("observed and predicted must have the same rows and columns")
    fig = make_subplots(
        rows=2,
        cols=1,
        subplot_titles=("Observed", "Predicted (Departures)"),
        vertical_spacing=0.08,
        shared_xaxes=True,
    )
    top = float(np.nanmax(np.abs(np.concatenate([observed.to_numpy(), predicted.to_numpy()]))))
    top = max(0.1, top if np.isfinite(top) else 0.1)  # one symmetric scale for both panels
    for row, frame in enumerate((observed, predicted), 1):
        fig.add_heatmap(
            z=frame.to_numpy(),
            x=list(frame.columns),
            y=list(frame.index),
            zmin=-top,
            zmax=top,
            colorscale="RdBu_r",
            colorbar={"title": "Δ active"},
            showscale=row == 1,
            hovertemplate="%{y}<br>%{x}: %{z:+.2f}<extra></extra>",
            row=row,
            col=1,
        )
    height = max(420, 2 * (24 * len(observed) + 80) + 80)
    fig.update_layout(
        title="Change in fraction of active cells vs control, top switching genes",
        height=height,
        **LAYOUT,
    )
    fig.update_xaxes(tickangle=-60)
    return fig
