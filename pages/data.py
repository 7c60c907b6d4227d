"""Data: load a dataset, map its obs keys, check it, summarise it, see its UMAP."""

import streamlit as st

from app import sidebar, state, widgets
from departures_core import embedding, figures, launch, pp
from departures_core.config import DataConfig
from departures_core.errors import DeparturesError

st.title("Data")
pick, upload = st.columns(2)
choices = state.bundled()
name = pick.selectbox("Bundled dataset", list(choices))
if pick.button("Load bundled dataset", icon=":material/download:"):
    if state.attempt("data", state.open_dataset, name, choices[name], "bundled"):
        st.rerun()  # redraw the sidebar too
uploaded = upload.file_uploader("…or upload your own .h5ad (up to 2 GB)", ["h5ad"], key="upload")
if uploaded is not None and st.session_state.get("upload_id") != uploaded.file_id:
    st.session_state["upload_id"] = uploaded.file_id
    if state.attempt("upload", state.load_upload, uploaded):
        st.rerun()
if uploaded is not None:  # why the file in the uploader could not be opened, if it could not
    state.error("upload")
state.error("data")

ds, adata = state.dataset(), state.adata()
if ds is None:
    st.info("Load the bundled demo dataset or upload an AnnData `.h5ad` file to begin.")
    st.stop()

st.subheader(sidebar.escape(ds.name))
if 0 in adata.shape or adata.obs.columns.empty:  # nothing to map or to show: say why, stop
    state.error("detect")
    st.stop()
counts = pp.is_counts(adata)
expression = "raw counts (log-normalised for training)" if counts else "log-normalised"
st.caption(
    f"Expression: {expression}. The obs columns below were detected automatically; "
    "change them if they are wrong."
)
detected = state.obs_keys()
keys = widgets.obs_keys_editor(ds.key, adata, detected)
state.set_obs_keys(keys)
if detected is None:  # detection failed: the editor starts from a guess
    st.session_state[f"guess-{ds.key}"] = keys
guessed = keys == st.session_state.get(f"guess-{ds.key}")
if guessed:
    state.error("detect")  # why the columns could not be detected
min_cells = DataConfig.min_cells
try:
    rare = launch.check_dataset(
        adata, keys, min_cells=min_cells, drop_rare=st.session_state[state.DROP_RARE]
    )
    dropped = f" {len(rare)} rare perturbation(s) will be dropped." if rare else ""
    if guessed:
        st.warning(f"The columns above are a guess: check them before training.{dropped}")
    else:
        st.success(f"Ready to train.{dropped}", icon=":material/check_circle:")
except DeparturesError as exc:
    state.show_error(exc)
st.checkbox(f"Drop perturbations with fewer than {min_cells} cells", key=state.DROP_RARE)

summary = figures.dataset_summary(adata, keys)
for col, (label, value) in zip(st.columns(len(summary)), summary.items(), strict=True):
    col.metric(label, value)

tab_umap, tab_counts = st.tabs(["UMAP", "Cells per perturbation"])
with tab_umap:
    options = ["perturbation", *(["cell type"] if keys.cell_type_key else []), "gene"]
    colour_by = st.radio("Colour by", options, horizontal=True)
    gene = None
    if colour_by == "gene":
        genes = state.genes_by_variance(ds)
        gene = st.selectbox("Gene (most variable first)", genes, key=f"gene-{ds.key}")
    emb = state.embedding_for(ds)
    if isinstance(emb, embedding.Job) and emb.error:
        st.error(f"The UMAP could not be computed: {emb.error}", icon=":material/error:")
        if st.button("Try again"):
            state.embedding_for(ds, retry=True)
            st.rerun()
    elif isinstance(emb, embedding.Job):

        @st.fragment(run_every=1.0)
        def _wait(job: embedding.Job) -> None:
            if job.done:
                st.rerun()
            st.info(
                f"Computing the UMAP in the background: {job.stage}, {job.elapsed:.0f} s so "
                "far. The rest of the app stays usable.",
                icon=":material/hourglass_top:",
            )

        _wait(emb)
    else:
        rows, coords = emb.aligned_to(adata)
        if gene is not None:
            colour, label = figures.gene_values(adata, rows, gene), gene
        else:
            key = keys.perturbation_key if colour_by == "perturbation" else keys.cell_type_key
            colour, label = adata.obs[key].to_numpy()[rows], colour_by
        fig = figures.embedding_scatter(
            coords,
            colour,
            label=label,
            categorical=gene is None,
            highlight=keys.control if colour_by == "perturbation" else None,
            title=f"UMAP of {len(rows):,} cells coloured by {label}",
        )
        st.plotly_chart(fig, width="stretch")
with tab_counts:
    table = state.cell_counts(ds, keys)
    st.plotly_chart(figures.cell_count_bar(table), width="stretch")
    st.caption("Click a column header to sort.")
    st.dataframe(table, width="stretch")
