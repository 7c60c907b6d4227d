"""Perturbations: what the model predicts for one or several perturbations of a cell type,
next to the observed and the control cells — on a UMAP, in the metrics against the
baselines, in the top DE genes and gene by gene — with downloads of all of it.
"""

import re

import pandas as pd
import streamlit as st

from app import links, run_state, sidebar, state, widgets
from departures_core import explore, explore_figures, notes
from departures_core.errors import DeparturesError

KEY_METRICS = [
    "e_distance",
    "e_distance_de20",
    "emd",
    "mmd",
    "activation_pcc",
    "pearson_delta_de20",
]

row = links.header("Perturbations")
run = run_state.trained_run()
if run is None:
    st.stop()
table = run_state.conditions(*run_state.run_key(run))
st.caption(
    f"Run {sidebar.code(run.path.name)} · epoch {run.epoch} · {len(run.data.genes):,} genes · "
    f"{int(table['held_out'].sum())} held-out conditions of {len(table)}"
)
cell_type, perts = widgets.condition_picker(table, key="perturbations", multi=True)
links.share(row, "perturbations")
if not perts:
    st.info("Pick at least one perturbation.", icon=":material/info:")
    st.stop()
n_control = int(table.loc[table["cell_type"] == cell_type, "n_control"].iloc[0])
c_cells, c_seed = st.columns(2)
n_cells = c_cells.number_input(
    "Cells to predict per perturbation",
    10,
    20_000,
    min(n_control, 2_000),
    step=50,
    help=f"Each starts from a control cell of {cell_type} ({n_control:,} there; drawn with "
    "replacement when you ask for more).",
)
seed = c_seed.number_input("Seed", 0, 2**31 - 1, 0, help="Same seed, same predicted cells.")

try:
    bar = st.progress(0.0, text="Predicting…")
    cells = []
    for i, p in enumerate(perts):
        bar.progress(i / (len(perts) + 1), text=f"Predicting {p} ({i + 1} of {len(perts)})…")
        cells.append(run_state.condition_cells(run, p, cell_type, n_cells=int(n_cells), seed=seed))
    bar.progress(len(perts) / (len(perts) + 1), text="Fitting the UMAP and placing the cells…")
    cmap = run_state.cell_map(run, perts, cell_type)  # one map seed: the same map on every view
    groups = [(perts[0], "control", run_state.placed(run, cmap, cells[0], "control"))]
    for c in cells:
        groups.append((c.perturbation, "observed", run_state.placed(run, cmap, c, "observed")))
        groups.append((c.perturbation, "predicted", run_state.placed(run, cmap, c, "predicted")))
    scores = pd.concat(
        [run_state.condition_scores(run, c).assign(perturbation=c.perturbation) for c in cells]
    ).reset_index()
    bar.empty()
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()

what = ", ".join(perts) if len(perts) <= 3 else f"{len(perts)} perturbations"
umap = explore_figures.prediction_map(groups, title=f"{what} in {cell_type}: predicted vs observed")
st.plotly_chart(umap, width="stretch")
st.caption(
    "UMAP fitted on the control cells and the observed perturbed cells; predicted cells are "
    "placed on it with the fitted map's `transform`. Open diamonds: predicted; filled: observed."
)
said = [notes.held_out_note(run.data, cells)] + [notes.responder_note(c) for c in cells]
for note in filter(None, said):
    st.caption(sidebar.escape(note))

st.subheader("Metrics against the baselines")
metric_cols = [m for m in KEY_METRICS if m in scores.columns]
shown = scores[["perturbation", "method", *metric_cols]]
st.dataframe(
    shown.style.format(dict.fromkeys(metric_cols, "{:.3f}"), na_rep="–"),
    hide_index=True,
    width="stretch",
)
st.caption(
    "Departures is scored on the cells predicted above; `control` predicts no change, "
    "`mean_shift` adds the mean training shift. Lower is better except for the Pearson "
    "columns. Ablations appear when the run was evaluated with "
    "`python -m departures_core evaluate RUN --ablations`."
)
vcc = [
    (c.perturbation, table)
    for c in cells
    if (table := run_state.saved_cell_eval(run, c.perturbation, cell_type)) is not None
]
if vcc:
    st.markdown("**Virtual Cell Challenge metrics** (cell-eval, from the run's evaluation)")
    for pert, table in vcc:
        shown = table.reset_index().assign(perturbation=pert)
        st.dataframe(
            shown[["perturbation", *shown.columns[:-1]]].style.format(
                dict.fromkeys(table.columns, "{:.3f}"), na_rep="–"
            ),
            hide_index=True,
            width="stretch",
        )
    st.caption(
        "From `evaluate RUN --cell-eval`, on the cells that evaluation predicted (seed 0). "
        "Higher is better except `mae`; `vcc_score` is the challenge's score against "
        "`control` (0 by definition). `overlap_at_N` is limited where a condition has few "
        "significant DE genes, and is 0 for every method where it has none."
    )
metric = st.selectbox("Compare", metric_cols, index=0, key="pert-metric")
bars = explore_figures.method_bars(scores, metric)
st.plotly_chart(bars, width="stretch")

focus = perts[0]
if len(perts) > 1:
    focus = st.selectbox("Genes of", perts, key="pert-focus")
fc = cells[perts.index(focus)]
left, right = st.columns(2)
with left:
    changes = explore.top_changes(fc, 20)
    de = explore_figures.de_changes(changes, title=f"{focus}: top 20 changed genes")
    st.plotly_chart(de, width="stretch")
with right:
    ordered = changes["gene"].tolist() + [g for g in fc.genes if g not in set(changes["gene"])]
    gene = st.selectbox("Gene", ordered, key=f"pert-gene-{focus}", help="Most changed genes first.")
    j = fc.gene_index(gene)
    violin = explore_figures.gene_distribution(
        {
            "control": fc.control[:, j],
            "observed": fc.observed[:, j],
            "predicted": fc.predicted[:, j],
        },
        gene,
    )
    st.plotly_chart(violin, width="stretch")

st.subheader("Downloads")
stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"{run.path.name}-{cell_type}-{what}")[:80]
d1, d2, d3, d4, d5 = st.columns(5)
d1.download_button(
    "Cells (.h5ad)",
    data=lambda: explore.h5ad_bytes(explore.predicted_anndata(run, cells)),
    file_name=f"{stem}-predicted.h5ad",
    mime="application/x-hdf5",
    icon=":material/download:",
    on_click="ignore",
)
d2.download_button(
    "Metrics (CSV)",
    data=shown.to_csv(index=False),
    file_name=f"{stem}-metrics.csv",
    mime="text/csv",
    icon=":material/download:",
    on_click="ignore",
)
with d3:
    widgets.figure_download(umap, f"{stem}-umap.html", label="UMAP (HTML)")
with d4:
    widgets.figure_download(de, f"{stem}-{focus}-de-genes.html", label="DE genes (HTML)")
with d5:
    widgets.figure_download(violin, f"{stem}-{gene}-violin.html", label="Violin (HTML)")
