"""The sidebar every page shares: dataset, run (selectable) and device; the runs folder.

Also `escape` and `code`, which any page uses to put a user's text (file, run, perturbation
or column names) into Markdown so that it is shown as typed, never interpreted.
"""

from __future__ import annotations

import re
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
            st.caption(f"{escape(ds.name)} · {state.adata().n_obs:,} cells")
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
    if state.auto_picked():
        st.caption("The most recently finished run, opened for you; pick another here.")
    trained_on = next((r.dataset for r in runs if str(r.path) == str(current)), "")
    ds = state.dataset()
    if trained_on and (ds is None or trained_on != ds.name):
        # the run's pages show the run's own cells, whatever the session's dataset is
        st.caption(f"Trained on {escape(trained_on)}: its pages show that dataset's cells.")
    if picked != (str(current) if current else None):
        state.set_run(Path(picked) if picked else None)
        st.rerun()


# ------------------------------------------------------------------ user text in Markdown
# st.markdown, st.caption, st.subheader, st.info/error/... render Markdown (raw HTML is
# shown as text: we never pass unsafe_allow_html): a file named "**x**" would turn bold,
# "[x](url)" become a link, "$x$" maths, ":red[x]" red.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def escape(text) -> str:
    """``text`` for Markdown prose: shown as typed.

    Every ASCII punctuation character is backslash-escaped (CommonMark allows it for all of
    them), which also disarms HTML, links, ``$`` maths and ``:red[...]`` directives; line
    breaks become spaces, so the text cannot start a heading or a list.
    """
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def code(text) -> str:
    """``text`` as a Markdown code span (monospace, shown literally), whatever backticks
    it holds: the fence is one backtick longer than its longest run of them."""
    text = " ".join(str(text).splitlines()) or " "
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""  # CommonMark strips one each
    return f"{fence}{pad}{text}{pad}{fence}"
