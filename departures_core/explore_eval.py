"""What the app's Evaluation view shows of a run's saved evaluation (``RUN/eval``): the
files read with messages that say how to fix them, Departures against the best baseline
condition by condition, and its scatter. The statistics are `report`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import report
from .errors import RunError

EVAL_DIR, METRICS_FILE, CALIBRATION_FILE = "eval", "metrics.csv", "calibration.csv"
EFFECT_COLOURS = {"clear": "#1f5fa8", "small": "#e08a1e", "unknown": "#7f7f7f"}


def evaluate_command(run_dir: str | Path) -> str:
    """The command that writes ``run_dir``'s evaluation."""
    import shlex

    return f"python -m departures_core evaluate {shlex.quote(str(run_dir))}"


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_DIR / METRICS_FILE


def read_metrics(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's ``eval/metrics.csv`` (long, `report.normalise`d), or None when it has none.

    Raises
    ------
    RunError
        The file cannot be read or is not an evaluation (the message says how to remake it).
    """
    path = metrics_path(run_dir)
    if not path.is_file():
        return None
    again = f"Write it again with `{evaluate_command(run_dir)}`."
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunError(
            f"The run's {EVAL_DIR}/{METRICS_FILE} cannot be read ({why}). {again}"
        ) from exc
    try:
        frame = report.normalise(frame)
    except ValueError as exc:
        raise RunError(
            f"The run's {EVAL_DIR}/{METRICS_FILE} is not an evaluation: {exc}. {again}"
        ) from exc
    if not frame["value"].notna().any():
        raise RunError(f"The run's {EVAL_DIR}/{METRICS_FILE} holds no scores. {again}")
    return frame


def read_calibration(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(medians per split, the whole table)`` of the run's ``eval/calibration.csv``
    (`calibration.summarize`), or None when it has none; `RunError` when unreadable."""
    path = Path(run_dir) / EVAL_DIR / CALIBRATION_FILE
    if not path.is_file():
        return None
    from . import calibration

    try:
        table = pd.read_csv(path)
        return calibration.summarize(table), table
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunError(
            f"The run's {EVAL_DIR}/{CALIBRATION_FILE} cannot be read ({why}). "
            f"Write it again with `{evaluate_command(run_dir)}`."
        ) from exc


def scatter_metrics(frame: pd.DataFrame, *, split: str, cells: str) -> list[str]:
    """The metrics with a Departures score and a best baseline, key metrics first."""
    wide = report.conditions(frame, split=split, cells=cells)
    return [
        m
        for m in report.order(wide.columns.get_level_values(0).drop("effect"))
        if report.MODEL in wide[m] and report.best_baseline(wide, m)
    ]


def versus_best(frame: pd.DataFrame, metric: str, *, split: str, cells: str):
    """``(best baseline, table)``: per condition Departures' and that baseline's score of
    ``metric``, their difference (Departures - baseline), the effect size and who is better;
    conditions where either has no score are left out."""
    wide = report.conditions(frame, split=split, cells=cells)
    best = report.best_baseline(wide, metric)
    if best is None or report.MODEL not in wide[metric]:
        raise KeyError(f"no Departures and baseline scores of {metric!r}")
    table = pd.DataFrame(
        {
            "effect": wide[("effect", "")],
            "departures": wide[(metric, report.MODEL)],
            best: wide[(metric, best)],
        }
    ).dropna(subset=["departures", best])
    table["difference"] = table["departures"] - table[best]
    result = report.outcomes(
        table["departures"], table[best], higher=report.higher_is_better(metric)
    )
    table["better"] = np.select([result == 1, result == -1], ["departures", best], "tie")
    return best, table.reset_index()


def best_scatter(table: pd.DataFrame, metric: str, best: str):
    """Departures (y) against the best baseline (x), one point per condition coloured by
    effect size, with the diagonal y = x; the side where Departures is better is named."""
    import plotly.graph_objects as go

    from .figures import LAYOUT

    higher = report.higher_is_better(metric)
    side = "higher" if higher else "lower"
    fig = go.Figure()
    values = table[["departures", best]].to_numpy(float)
    lo, hi = (float(np.min(values)), float(np.max(values))) if len(values) else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    fig.add_scatter(
        x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#999", "dash": "dash"}
    )
    for effect, colour in EFFECT_COLOURS.items():
        part = table[table["effect"] == effect]
        if part.empty:
            continue
        names = (part["perturbation"] + " in " + part["cell_type"]).tolist()
        fig.add_scatter(
            x=part[best],
            y=part["departures"],
            mode="markers",
            name=f"{effect} effect ({len(part)})",
            marker={"color": colour, "size": 9, "line": {"width": 0.5, "color": "white"}},
            text=names,
            hovertemplate="%{text}<br>"
            + best
            + ": %{x:.4g}<br>departures: %{y:.4g}<extra></extra>",
        )
    wins = int((table["better"] == "departures").sum())
    losses = int((table["better"] == best).sum())
    fig.add_annotation(
        x=hi if not higher else lo,
        y=lo if not higher else hi,
        xanchor="right" if not higher else "left",
        yanchor="bottom" if not higher else "top",
        text=f"Departures better ({'above' if higher else 'below'} the line)",
        showarrow=False,
        font={"color": "#555"},
    )
    fig.update_layout(
        title=f"{metric}: Departures against {best}, {wins} wins, {losses} losses "
        f"of {len(table)} conditions",
        xaxis={"title": f"{best}: {metric} ({side} is better)", "range": [lo, hi]},
        yaxis={"title": f"Departures: {metric} ({side} is better)", "range": [lo, hi]},
        legend_title="effect size",
        height=520,
        **LAYOUT,
    )
    return fig
