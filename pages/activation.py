"""Activation: per gene, the fraction of cells in which it is on (expression > 0) — control,
observed and predicted —, the genes a perturbation switches on or off and whether the
on/off bridge catches them, and a heatmap of the top switching genes across perturbations.
"""

import re

import numpy as np
import streamlit as st

from app import links, run_state, state, widgets
from departures_core import activation, explore_figures
from departures_core.errors import DeparturesError

row = links.header("Activation")
run = run_state.trained_run()
if run is None:
    st.stop()
table = run_state.conditions(*run_state.run_key(run))
cell_type, pert = widgets.condition_picker(table, key="activation")
links.share(row, "activation")
n_control = int(table.loc[table["cell_type"] == cell_type, "n_control"].iloc[0])
c_cells, c_seed, c_thr = st.columns(3)
n_cells = c_cells.number_input(
    "Cells to predict", 10, 20_000, min(n_control, 2_000), step=50, key="act-cells"
)
seed = c_seed.number_input("Seed", 0, 2**31 - 1, 0, key="act-seed")
threshold = c_thr.slider(
    "Switch threshold",
    0.05,
    0.5,
    activation.SWITCH_THRESHOLD,
    0.05,
    help="A gene switches on (off) when the fraction of cells expressing it rises (falls) "
    "by at least this much against control.",
)
try:
    with st.spinner(f"Predicting {pert}…"):
        cells = run_state.condition_cells(run, pert, cell_type, n_cells=int(n_cells), seed=seed)
    act = activation.activation_table(cells, threshold=threshold)
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()
summary = activation.switch_summary(act)
reference = activation.switch_summary(act.assign(predicted=act["control"], predicted_change=0.0))[
    "activation_pcc"
]

m1, m2, m3, m4 = st.columns(4)
m1.metric(
    "Activation PCC",
    f"{summary['activation_pcc']:.3f}",
    f"{summary['activation_pcc'] - reference:+.3f} vs control",
    help="Pearson r over genes of the fraction of active cells, predicted vs observed. The "
    f"delta compares with the control cells taken as the prediction ({reference:.3f}).",
)
n_switch = summary["switched_on"] + summary["switched_off"]
m2.metric("Genes switched", f"{summary['switched_on']} on · {summary['switched_off']} off")
m3.metric(
    "Caught by the prediction",
    f"{summary['caught']} of {n_switch}",
    f"{summary['recall']:.0%} recall" if n_switch else None,
    delta_color="off",
)
m4.metric(
    "Predicted switches not observed",
    summary["false"],
    f"{summary['precision']:.0%} precision" if summary["caught"] + summary["false"] else None,
    delta_color="off",
)
held = " (held out: never trained on)" if cells.held_out else ""
scatter = explore_figures.activation_scatter(
    act, threshold=threshold, title=f"{pert} in {cell_type}{held}: active cells per gene"
)
st.plotly_chart(scatter, width="stretch")

st.subheader("Switching genes")
switching = act[(act["switch"] != "") | (act["predicted_switch"] != "")]
if switching.empty:
    st.caption(f"No gene changes its fraction of active cells by {threshold:.2f} or more.")
else:
    st.dataframe(
        switching.assign(caught=np.where(switching["caught"], "yes", "no")).style.format(
            dict.fromkeys(
                ["control", "observed", "predicted", "observed_change", "predicted_change"],
                "{:.2f}",
            )
        ),
        hide_index=True,
        width="stretch",
        height=min(400, 36 * (len(switching) + 1)),
    )

st.subheader("Across perturbations")
options = table.loc[table["cell_type"] == cell_type, "perturbation"].tolist()
held_out = table.loc[(table["cell_type"] == cell_type) & table["held_out"], "perturbation"]
default = list(dict.fromkeys([pert, *held_out.tolist()]))[:12]
h_perts, h_genes = st.columns([3, 1])
chosen = h_perts.multiselect(
    "Perturbations in the heatmap", options, default=default, key=f"act-heat-{cell_type}"
)
n_genes = h_genes.number_input("Genes", 5, 100, 30, step=5, key="act-heat-genes")
if chosen:
    bar = st.progress(0.0, text="Predicting…")
    try:
        many = []
        for i, p in enumerate(chosen):
            bar.progress(i / len(chosen), text=f"Predicting {p} ({i + 1} of {len(chosen)})…")
            many.append(
                run_state.condition_cells(run, p, cell_type, n_cells=int(n_cells), seed=seed)
            )
        observed, predicted = activation.switch_matrix(many, n_genes=int(n_genes))
    except DeparturesError as exc:
        state.show_error(exc)
        st.stop()
    finally:
        bar.empty()
    heat = explore_figures.switch_heatmaps(observed, predicted)
    st.plotly_chart(heat, width="stretch")
else:
    heat = None
    st.caption("Pick perturbations to compare.")

st.subheader("Downloads")
stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{run.path.name}-{cell_type}-{pert}")[:80]
d1, d2, d3 = st.columns(3)
d1.download_button(
    "Activation per gene (CSV)",
    data=act.to_csv(index=False),
    file_name=f"{stem}-activation.csv",
    mime="text/csv",
    icon=":material/download:",
    on_click="ignore",
)
with d2:
    widgets.figure_download(scatter, f"{stem}-activation.html", label="Scatter (HTML)")
if heat is not None:
    with d3:
        widgets.figure_download(heat, f"{stem}-switch-heatmap.html", label="Heatmap (HTML)")
