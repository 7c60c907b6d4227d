"""Plotly figures of the Perturbations and Activation views (predicted vs observed cells,
scores by method, DE genes, gene distributions, activation). Never imports streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import CONTROL_COLOUR, LAYOUT, PALETTE

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
