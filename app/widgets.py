"""Widget groups used by the pages."""

from __future__ import annotations

import anndata as ad
import streamlit as st

from app import links
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


def condition_picker(table, *, key: str, multi: bool = False):
    """Cell type and perturbation(s) of a trained run, held-out ones first and marked.

    ``table`` is `run_state.conditions` (one row per observed condition). Returns
    ``(cell_type, perturbations)`` — a list when ``multi``, else one name. The choice is kept
    per page (``key``) and shared across pages through ``"pick:*"`` session keys; a link
    that has just arrived sets it (`links.linked_condition`), and the URL follows it.
    """
    cell_types = sorted(table["cell_type"].unique())
    default = _default_cell_type(table, cell_types)
    link = links.linked_condition(table, multi=multi, default=default)
    if link:
        st.session_state["pick:cell_type"] = default = link[0]
        if link[1]:
            st.session_state["pick:perturbations"] = link[1]
    forced = link is not None
    c_type, c_pert = st.columns([1, 3])
    _settle(f"{key}-cell-type", default, cell_types, force=forced)
    cell_type = c_type.selectbox(
        "Cell type",
        cell_types,
        key=f"{key}-cell-type",
        help="Predictions start from the control cells of this cell type.",
    )
    st.session_state["pick:cell_type"] = cell_type
    rows = table[table["cell_type"] == cell_type]
    perts = rows["perturbation"].tolist()  # held-out first (conditions_table's order)
    is_held = dict(zip(rows["perturbation"], rows["held_out"], strict=True))
    validation = rows["validation"] if "validation" in rows else [False] * len(rows)
    is_val = dict(zip(rows["perturbation"], validation, strict=True))
    n_cells = dict(zip(rows["perturbation"], rows["n_perturbed"], strict=True))

    def label(p: str) -> str:
        kind = " · held out" if is_held[p] else " · validation" if is_val.get(p) else ""
        return f"{p}{kind} ({n_cells[p]} cells)"

    last = [p for p in st.session_state.get("pick:perturbations", []) if p in perts]
    help_ = (
        "Held-out perturbations were never trained on: the model predicts them unseen. "
        "Validation ones were left out of training too; what an unseen perturbation is "
        "predicted with was fitted on them."
    )
    if multi:
        pert_key = f"{key}-perts-{cell_type}"
        _settle(pert_key, last or perts[:1], perts, force=forced, many=True)
        picked = c_pert.multiselect(
            "Perturbations", perts, format_func=label, key=pert_key, help=help_
        )
        if picked:
            st.session_state["pick:perturbations"] = picked
        links.write_condition(cell_type, picked)
        return cell_type, picked
    pert_key = f"{key}-pert-{cell_type}"
    _settle(pert_key, last[0] if last else perts[0], perts, force=forced)
    picked = c_pert.selectbox("Perturbation", perts, format_func=label, key=pert_key, help=help_)
    st.session_state["pick:perturbations"] = [picked, *(p for p in last if p != picked)]
    links.write_condition(cell_type, [picked])
    return cell_type, picked


def _default_cell_type(table, cell_types: list[str]) -> str:
    """The cell type picked last on any page, else the one with most held-out conditions."""
    last = st.session_state.get("pick:cell_type")
    if last in cell_types:
        return last
    held = table.groupby("cell_type")["held_out"].sum()
    return max(cell_types, key=lambda c: (held.get(c, 0), c == cell_types[0]))


def _settle(key: str, default, options: list, *, force: bool, many: bool = False) -> None:
    """Give widget ``key`` the value ``default`` when it holds none of ``options`` (with
    ``many``, a list of them), or always with ``force`` (a link has just arrived).

    The widgets take their value from session state only, never from ``index=``/``default=``
    as well, which Streamlit would warn about once a link has set them.
    """
    value = st.session_state.get(key)
    if many:
        valid = isinstance(value, list) and set(value) <= set(options)
    else:
        valid = value in options
    if force or not valid:
        st.session_state[key] = default


def figure_download(fig, file_name: str, *, label: str = "Figure (HTML)") -> None:
    """A button that downloads ``fig`` as a self-contained interactive HTML file (made only
    when clicked). The chart's own camera icon saves a PNG."""
    st.download_button(
        label,
        data=lambda: fig.to_html(include_plotlyjs=True, full_html=True),
        file_name=file_name,
        mime="text/html",
        icon=":material/download:",
        on_click="ignore",
        key=f"dl-{file_name}",
    )
