"""Widget groups used by the pages."""

from __future__ import annotations

import anndata as ad
import streamlit as st

from departures_core import io

NONE = "(none)"


def obs_keys_editor(ds_key: str, adata: ad.AnnData, keys: io.ObsKeys | None) -> io.ObsKeys:
    """Four selectboxes mapping obs columns onto perturbation, control, cell type and dose,
    starting from ``keys`` (auto-detected); their state is kept per dataset."""
    columns = [str(c) for c in adata.obs.columns]
    optional = [NONE, *columns]
    c_pert, c_ctrl, c_type, c_dose = st.columns(4)
    pert_key = c_pert.selectbox(
        "Perturbation column",
        columns,
        key=f"pk-{ds_key}",
        index=columns.index(keys.perturbation_key) if keys else 0,
        help="obs column naming each cell's perturbation; combinations are written A+B.",
    )
    values = adata.obs[pert_key].astype(str).value_counts().index.tolist()
    control = c_ctrl.selectbox(
        "Control value",
        values,
        key=f"ctrl-{ds_key}-{pert_key}",
        index=values.index(keys.control) if keys and keys.control in values else 0,
        help="The value of that column that marks unperturbed control cells.",
    )
    cell_type = c_type.selectbox(
        "Cell type column",
        optional,
        key=f"ct-{ds_key}",
        index=optional.index(keys.cell_type_key) if keys and keys.cell_type_key else 0,
        help="Optional: cells are paired only with controls of the same cell type.",
    )
    dose = c_dose.selectbox(
        "Dose column",
        optional,
        key=f"dose-{ds_key}",
        index=optional.index(keys.dose_key) if keys and keys.dose_key else 0,
        help="Optional: numeric drug doses. Leave it at (none) for CRISPR screens.",
    )
    return io.ObsKeys(
        pert_key, control, None if cell_type == NONE else cell_type, None if dose == NONE else dose
    )
