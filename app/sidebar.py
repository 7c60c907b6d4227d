"""The sidebar every page shares: dataset, run (selectable) and device; the runs folder."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from departures_core import registry


def render() -> None:
    with st.sidebar:
        ds = state.dataset()
        st.markdown("**Dataset**")
        if ds is None:
            st.caption("none loaded — see Home or Data")
        else:
            st.caption(f"{ds.name} · {state.adata().n_obs:,} cells")
        _run_picker()
        st.markdown("**Device**")
        st.caption(state.device_label())
        with st.expander("Runs folder"):
            st.text_input(
                "Folder where runs are saved and listed",
                key=state.RUNS_DIR,
                help="Default `runs/` at the repository root, or the environment "
                f"variable {registry.RUNS_ENV}.",
            )


def _run_picker() -> None:
    runs = registry.list_runs(state.runs_dir())
    labels = {str(r.path): f"{r.name} ({r.status.state})" for r in runs}
    current = state.current_run()
    if current is not None and str(current) not in labels:  # a folder opened by path
        labels[str(current)] = f"{current.name} ({current.parent})"
    options = [None, *labels]
    picked = st.selectbox(
        "**Run**",
        options,
        index=options.index(str(current) if current else None),
        format_func=lambda p: labels.get(p, "none"),
        help="Runs in the runs folder; open one trained elsewhere from Home.",
    )
    if picked != (str(current) if current else None):
        state.set_run(Path(picked) if picked else None)
        st.rerun()
