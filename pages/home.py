"""Home: what the tool does, this session's state, the demo in one click, saved runs."""

import streamlit as st

from app import state
from app.sidebar import code, escape
from departures_core import registry
from departures_core.errors import DeparturesError

st.title("Departures Explorer")
st.markdown(
    "Departures predicts how single cells respond to a perturbation (a CRISPR knock-out or "
    "activation, or a drug at a dose), including perturbations it has never seen. It pairs "
    "control with perturbed cells by optimal transport and learns two Schrödinger bridges that "
    "carry control cells to their perturbed state: one for expression levels, one for which "
    "genes are switched on."
)

ds, run = state.dataset(), state.current_run()
col_data, col_run, col_device = st.columns(3)
with col_data.container(border=True):
    st.markdown("**Dataset**")
    if ds is None:
        st.caption("None loaded yet.")
    else:
        adata, keys = state.adata(), state.obs_keys()
        st.markdown(f"{escape(ds.name)}  \n{adata.n_obs:,} cells × {adata.n_vars:,} genes")
        if keys:
            st.caption(f"perturbation {code(keys.perturbation_key)} · control {code(keys.control)}")
with col_run.container(border=True):
    st.markdown("**Run**")
    if run is None:
        st.caption("None selected.")
    else:
        status = registry.status(run)
        st.markdown(f"{escape(run.name)}  \n{status.state}, epoch {status.epoch}")
with col_device.container(border=True):
    st.markdown("**Device**")
    st.markdown(state.device_label())

if st.button("Load the demo dataset", type="primary", icon=":material/play_arrow:"):
    state.load_demo()
    st.switch_page(state.PAGES_DIR / "data.py")
st.caption(
    "5,961 cells from CRISPR screens in four cell lines (PerturBench: Norman 2019, "
    "McFaline-Figueroa 2023), 33 perturbations; its UMAP ships with the app."
)

st.subheader("Saved runs")
runs = registry.list_runs(state.runs_dir())
if not runs:
    st.caption(f"No runs in {code(state.runs_dir())} yet: train one on the Train page.")
else:
    st.caption("Click a row to open that run; it is then selected on every page.")

    def _open_selected() -> None:
        rows = st.session_state["runs_table"].selection.rows
        if rows:
            state.set_run(runs[rows[0]].path)

    st.dataframe(
        registry.runs_table(runs),
        hide_index=True,
        key="runs_table",
        on_select=_open_selected,
        selection_mode="single-row",
        column_config={"changed": st.column_config.DatetimeColumn(format="D MMM, HH:mm")},
    )

with st.form("open_folder", border=False):
    path = st.text_input(
        "Open a run folder trained elsewhere (any folder with model.pt and config.json)",
        placeholder="/path/to/run",
    )
    if st.form_submit_button("Open folder") and path:
        try:
            state.open_run_folder(path)
            st.rerun()
        except DeparturesError as exc:
            state.show_error(exc)
