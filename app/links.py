"""Links for talks: each exploration view keeps its state in the URL's query string, so a
copied address reopens the same view on the same condition.

    /perturbations?run=demo&perturbation=KLF1&cell_type=k562
    /trajectories?run=demo&perturbation=KLF1&cell_type=k562&colour=onoff&gene=HBG2&presentation=1

``run`` is a run's folder name inside the runs folder — never a path: a link cannot open
other folders. A repeated ``perturbation`` picks several on Perturbations. Values a run does
not have get a message that lists the ones it has, and the view shows what it would without
them.

A link is followed once, when it arrives: the query string differs from the one this session
last saw. After that the widgets lead and every change is written back (`write`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

import streamlit as st

from app import state
from app.sidebar import code
from departures_core import registry

RUN, PERTURBATION, CELL_TYPE = "run", "perturbation", "cell_type"
COLOUR, GENE, PRESENTATION = "colour", "gene", "presentation"
PARAMS = (RUN, PERTURBATION, CELL_TYPE, COLOUR, GENE, PRESENTATION)  # their order in a link
CONDITION = (RUN, PERTURBATION, CELL_TYPE)  # what every view writes
# session keys: the query string last seen; the link being followed in this script run; a
# link carried over the rerun that shows its run in the sidebar
_SEEN, _LINK, _CARRIED = "links:seen", "links:link", "links:carried"
EXAMPLES = 8  # values listed in a message


def header(title: str):
    """The view's title with a row on its right for the view's own controls and `share`'s
    link; follows a link that has just arrived (its run first). Returns the row."""
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    left.title(title)
    row = right.container(horizontal=True, horizontal_alignment="right")
    follow()
    return row


def follow() -> None:
    """Note the link the page was opened with, once, and select its run.

    The sidebar has been drawn with the previous run by then: a change of run reruns the
    script at once, carrying the link over for the view's widgets to read.
    """
    link = st.session_state.pop(_CARRIED, None)
    now = _query()
    if now != st.session_state.get(_SEEN):
        st.session_state[_SEEN] = link = now
    st.session_state[_LINK] = link or {}
    if link and RUN in link and _follow_run(link[RUN][-1]):
        st.session_state[_CARRIED] = link
        st.rerun()


def _follow_run(name: str) -> bool:
    """Select the run folder ``name`` of the runs folder; True when that changed the run."""
    runs = {r.name: r.path for r in registry.list_runs(state.runs_dir())}
    if name not in runs:  # matching listed folder names only: no path from a URL is opened
        _bad(RUN, name, "a run in the runs folder", list(runs))
        return False
    if state.current_run() == runs[name] and not state.auto_picked():
        return False
    state.set_run(runs[name])
    return True


def linked(param: str) -> list[str]:
    """The values the link being followed gives ``param`` (empty ones dropped)."""
    return [v for v in st.session_state.get(_LINK, {}).get(param, []) if v.strip()]


def seed(widget_key: str, param: str, choices: Mapping[str, object], *, what: str) -> None:
    """Set the widget ``widget_key`` to ``choices[v]`` when the link gives ``param=v``; a
    value not among ``choices`` gets a message listing them. Call before the widget."""
    values = linked(param)
    if not values:
        return
    if values[-1] in choices:
        st.session_state[widget_key] = choices[values[-1]]
    else:
        _bad(param, values[-1], what, list(choices))


def linked_condition(table, *, multi: bool, default: str) -> tuple[str, list[str]] | None:
    """The cell type and perturbations the link names, those the run has: ``(cell_type,
    perturbations)``, or None when it names neither. Others get a message.

    ``table`` is `run_state.conditions`. Without a valid cell type, the link's perturbations
    are looked for in the view's ``default`` cell type first, then in the others.
    """
    cell_types, perts = linked(CELL_TYPE)[-1:], linked(PERTURBATION)
    if not cell_types and not perts:
        return None
    by_type = {
        c: table.loc[table["cell_type"] == c, "perturbation"].tolist()
        for c in table["cell_type"].unique()
    }
    run = f"of run {code(state.current_run().name)}"
    if cell_types and cell_types[0] not in by_type:
        _bad(CELL_TYPE, cell_types[0], f"a cell type {run}", sorted(by_type))
        cell_types = []
    cell_type = cell_types[0] if cell_types else _home_of(perts, by_type, default)
    known = [_named(p, by_type[cell_type]) for p in perts]
    for p, name in zip(perts, known, strict=True):
        if name is None:
            elsewhere = ", ".join(code(c) for c in sorted(by_type) if _named(p, by_type[c]))
            where = f" (it has it in {elsewhere})" if elsewhere else ""
            what = f"a perturbation {run} in {code(cell_type)}{where}"
            _bad(PERTURBATION, p, what, by_type[cell_type])
    known = list(dict.fromkeys(n for n in known if n is not None))
    if not multi and len(known) > 1:
        st.info(f"This view shows one perturbation: {code(known[0])}, the link's first.")
    return cell_type, known


def _home_of(perts: Sequence[str], by_type: dict[str, list[str]], default: str) -> str:
    """The cell type that has most of ``perts``: ``default`` when it is as good."""
    order = sorted(by_type, key=lambda c: c != default)
    return max(order, key=lambda c: sum(_named(p, by_type[c]) is not None for p in perts))


def _named(value: str, names: Sequence[str]) -> str | None:
    """``value`` as one of ``names``. A typed ``+`` (KLF1+MAP2K6) arrives as a space in a
    query string, so a name with ``+`` for the spaces is accepted too."""
    for candidate in (value, value.replace(" ", "+")):
        if candidate in names:
            return candidate
    return None


def _bad(param: str, value: str, what: str, choices: Sequence[str]) -> None:
    some = ", ".join(code(c) for c in choices[:EXAMPLES]) or "none"
    more = f" … ({len(choices)} in all)" if len(choices) > EXAMPLES else ""
    st.error(
        f"The link sets {code(param)} to {code(value)}, which is not {what}. "
        f"Choices: {some}{more}. Showing the view without it.",
        icon=":material/link_off:",
    )


def write(**values: str | Sequence[str] | None) -> None:
    """Put ``values`` into the URL (None or empty removes a parameter), so the browser's
    address reproduces the view; remembered as seen, not as a link to follow."""
    query = _query() | {k: _as_list(v) for k, v in values.items()}
    query = {k: query[k] for k in PARAMS if query.get(k)}
    if query != _query():
        others = {k: st.query_params.get_all(k) for k in st.query_params if k not in PARAMS}
        st.query_params.from_dict({**query, **others})
    st.session_state[_SEEN] = query


def write_condition(cell_type: str, perturbations: Sequence[str]) -> None:
    """Write the view's run and condition and drop the parameters of other views."""
    run = state.current_run()
    in_folder = run is not None and run.parent.resolve() == state.runs_dir().resolve()
    stale = dict.fromkeys(p for p in PARAMS if p not in CONDITION)
    write(
        **stale,
        run=run.name if in_folder else None,
        cell_type=cell_type,
        perturbation=perturbations,
    )


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _query() -> dict[str, list[str]]:
    return {k: st.query_params.get_all(k) for k in PARAMS if k in st.query_params}


def share(row, page: str) -> None:
    """The "Copy link to this view" control in ``row``: the view's address, with a copy
    button, for slides and notes. ``page`` is the view's URL path (its file name)."""
    with row.popover("Copy link to this view", icon=":material/link:"):
        st.code(url(page), language=None, wrap_lines=True)
        st.caption("Opens this view on this condition (copy button on the right).")
        if RUN not in _query():
            st.caption("This run is not in the runs folder: the link opens the selected run.")


def url(page: str) -> str:
    """The view's address with its query string: absolute when the browser told us where
    the app is (`st.context.url`), else relative to the server's root."""
    base = st.context.url or f"/{page}"
    query = urlencode(_query(), doseq=True, quote_via=quote)
    return f"{base}?{query}" if query else base
