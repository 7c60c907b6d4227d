"""Evaluation: the selected run's saved held-out evaluation (``RUN/eval``) — medians with
bootstrap intervals of Departures and every baseline, wins/ties/losses with a paired
Wilcoxon test per baseline split by effect size, Departures against the best baseline
condition by condition (with links to each condition's Perturbations view), calibration.
"""

import json
from urllib.parse import quote, urlencode

import streamlit as st

from app import links, state
from app.sidebar import code
from departures_core import explore_eval, report
from departures_core.errors import DeparturesError


@st.cache_data(show_spinner=False, max_entries=8)
def _metrics(path: str, version: int):  # version: re-read a rewritten file
    return explore_eval.read_metrics(path)


@st.cache_data(show_spinner="Bootstrapping the medians…", max_entries=32)
def _stats(path: str, version: int, split: str, cells: str):
    frame = _metrics(path, version)
    args = {"split": split, "cells": cells}
    return report.medians(frame, **args), report.paired(frame, **args)


def _keep(key: str, options: list, default) -> None:
    """Give widget ``key`` ``default`` when its value is not (a list of) ``options``: they
    change with the split. Its widget then takes its value from session state alone."""
    value = st.session_state.get(key)
    if isinstance(default, list):
        st.session_state[key] = [v for v in value if v in options] if value else default
    elif value not in options:
        st.session_state[key] = default


def _choice(label: str, options: list[str], key: str) -> str:
    """A horizontal radio when there is a choice; else the one option."""
    if len(options) == 1:
        return options[0]
    _keep(key, options, options[0])
    return st.radio(label, options, horizontal=True, key=key)


row = links.header("Evaluation")
run_dir = state.current_run()
if run_dir is None:
    st.info("Pick a run in the sidebar, or train one on the Train page.", icon=":material/info:")
    st.stop()
in_folder = run_dir.parent.resolve() == state.runs_dir().resolve()
links.write(**(dict.fromkeys(links.PARAMS) | {links.RUN: run_dir.name if in_folder else None}))
links.share(row, "evaluation")
source = explore_eval.metrics_path(run_dir)
version = source.stat().st_mtime_ns if source.is_file() else 0
try:
    frame = _metrics(str(run_dir), version)
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()
if frame is None:
    st.info(
        f"Run {code(run_dir.name)} has no evaluation yet. Score its held-out conditions "
        "against the baselines with the command below (add `--ablations` for the "
        "ablations); this page shows the result.",
        icon=":material/info:",
    )
    st.code(explore_eval.evaluate_command(run_dir), language="bash")
    st.stop()

with st.container(horizontal=True, gap="large"):  # only the choices this evaluation offers
    split = _choice("Split", report.splits(frame), "eval-split")
    present_cells = report.cell_counts(frame[frame["split"] == split])
    cells = _choice("Predicted cells", present_cells, "eval-cells")
medians, pairs = _stats(str(run_dir), version, split, cells)
present = report.order(medians["metric"])
_keep("eval-metrics", present, [m for m in report.KEY_METRICS if m in present] or present[:6])
metrics = st.multiselect("Metrics", present, key="eval-metrics")
n = int(medians["n"].max()) if len(medians) else 0
st.caption(
    f"Run {code(run_dir.name)} · {split} split · {n} conditions · predicted cells: {cells}"
    + (" (baselines: their own cells)" if cells != report.PER_CONTROL else "")
)

st.subheader("Medians over conditions")
st.dataframe(report.median_table(medians, metrics), width="stretch")
st.caption(f"Median [{report.RULES['interval']}]. ↑ higher is better, ↓ lower is better.")

st.subheader("Departures against each baseline")
effects = [e for e in report.EFFECTS if (pairs["effect"] == e).any()]
effect = _choice("Effect size", effects, "eval-effect")
st.dataframe(report.wins_table(pairs, metrics, effect=effect), width="stretch")
st.caption(
    "Wins/ties/losses of Departures over conditions and the Wilcoxon p-value "
    f"({report.RULES['wilcoxon']}). Tie: {report.RULES['tie']}. Best: {report.RULES['best']}."
)
if effects == ["all"]:
    st.caption(
        "Effect sizes are unknown: this evaluation has no noise floor. Evaluate the run "
        f"again to split conditions by it ({report.RULES['effect']})."
    )

st.subheader("Departures against the best baseline, condition by condition")
choices = explore_eval.scatter_metrics(frame, split=split, cells=cells)
if not choices:
    st.info("This evaluation has no Departures and baseline scores to compare.")
    st.stop()
_keep("eval-scatter-metric", choices, choices[0])
metric = st.selectbox("Metric", choices, key="eval-scatter-metric", format_func=report.arrow)
best, per_condition = explore_eval.versus_best(frame, metric, split=split, cells=cells)
st.plotly_chart(explore_eval.best_scatter(per_condition, metric, best), width="stretch")
query = {links.RUN: run_dir.name} if in_folder else {}
per_condition["view"] = [
    "perturbations?"
    + urlencode({**query, links.PERTURBATION: p, links.CELL_TYPE: c}, quote_via=quote)
    for p, c in zip(per_condition["perturbation"], per_condition["cell_type"], strict=True)
]
st.dataframe(
    per_condition.drop(columns=[k for k in ("dataset", "fold") if k in per_condition]),
    hide_index=True,
    width="stretch",
    column_config={
        "view": st.column_config.LinkColumn("Perturbations view", display_text="open"),
        **{
            c: st.column_config.NumberColumn(format="%.4g")
            for c in ("departures", best, "difference")
        },
    },
)
st.caption(f"Difference: Departures − {best} ({report.arrow(metric)}).")

st.subheader("Calibration")
try:
    calibration = explore_eval.read_calibration(run_dir)
except DeparturesError as exc:
    calibration = None
    st.warning(str(exc), icon=":material/warning:")
if calibration is None:
    st.caption("No calibration table (eval/calibration.csv) in this evaluation.")
else:
    summary, table = calibration
    st.dataframe(summary.style.format("{:.3g}"), width="stretch")
    st.caption(
        "Medians per split; train_null: training conditions the perturbation leaves unchanged."
    )
    with st.expander(f"Every condition ({len(table)})"):
        st.dataframe(table, hide_index=True, width="stretch")

st.download_button(
    "Report (JSON)",
    data=lambda: json.dumps(report.summarise(frame), indent=2),
    file_name=f"{run_dir.name}-report.json",
    mime="application/json",
    icon=":material/download:",
    on_click="ignore",
)
