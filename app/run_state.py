"""Cached results of a trained run, shared by the exploration views: the opened run, its
conditions, simulated cells, UMAP maps and placements, scores, OT couplings and trajectory
frames.

Everything is cached in memory per run folder and its checkpoint's stamp (`cache.stamp`:
size, mtime, inode), so training more epochs invalidates it, and shared by every browser
session: read, never modify. What is slow to compute (cells, maps, positions, scores) is
also kept on disk under ``<runs>/.cache/runs`` (`departures_core.cache`), keyed by the
checkpoint's content: a new server process finds it there and never fits a UMAP for a
view shown before.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import state
from departures_core import cache, registry
from departures_core.errors import DeparturesError

DISK_CACHE = ".cache/runs"  # under the runs folder


# ------------------------------------------------------------------ exploration of a trained run
# Everything below is cached per run folder and its checkpoint's stamp, so training more
# epochs invalidates it, and shared by every session: read, never modify.
def _stamp(run_dir: Path) -> str:
    return cache.stamp(run_dir)


@st.cache_resource(show_spinner=False, max_entries=8)
def _disk(path: str, stamp: str, root: str) -> cache.RunCache:
    """The run's entries on disk (none when its checkpoint changed since ``stamp``)."""
    return cache.RunCache.for_run(root, path, expect=stamp)


def _on_disk(path: str, stamp: str) -> cache.RunCache:
    return _disk(path, stamp, str(state.runs_dir() / DISK_CACHE))


def maps_on_disk() -> bool:
    """Whether the session's run has a UMAP in the disk cache (its views were shown before)."""
    run_dir = state.current_run()
    if run_dir is None or not registry.is_run(run_dir):
        return False
    return _on_disk(str(run_dir), _stamp(run_dir)).has("map")


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def _open_run(path: str, stamp: str):
    from departures_core import runs

    return runs.open_run(path)


def trained_run():
    """The selected run, opened (`runs.Run`), or None after telling the user what to do.

    Pages call ``st.stop()`` on None. A corrupt or old run folder is reported, not fatal.
    """
    run_dir = state.current_run()
    if run_dir is None:
        st.info(
            "Pick a trained run in the sidebar, or train one on the Train page.",
            icon=":material/info:",
        )
        st.page_link(
            str(state.PAGES_DIR / "train.py"), label="Go to Train", icon=":material/model_training:"
        )
        return None
    if not registry.is_run(run_dir):
        status = registry.status(run_dir)
        st.info(
            f"Run `{run_dir.name}` has no saved model yet ({status.state}); its first "
            "checkpoint is written after the first epoch.",
            icon=":material/hourglass_top:",
        )
        return None
    try:
        return _open_run(str(run_dir), _stamp(run_dir))
    except DeparturesError as exc:
        state.show_error(exc)
        return None


def run_key(run) -> tuple[str, str]:
    """What identifies a run's model in the caches below."""
    return str(run.path), _stamp(Path(run.path))


@st.cache_resource(show_spinner=False, max_entries=4)
def conditions(path: str, stamp: str) -> pd.DataFrame:
    from departures_core import explore

    return explore.conditions_table(_open_run(path, stamp))


def _simulate(path, stamp, perturbation, cell_type, n_cells, seed, steps, trajectory):
    from departures_core import explore

    run = _open_run(path, stamp)
    request = (perturbation, cell_type, n_cells, seed, steps, trajectory)
    return _on_disk(path, stamp).get(
        "cells",
        request,
        lambda: explore.condition_cells(
            run,
            perturbation,
            cell_type,
            n_cells=n_cells,
            seed=seed,
            steps=steps,
            trajectory=trajectory,
            device="auto",
        ),
        explore.cells_codec(run),
    )


# endpoints are small (cells x genes); trajectories are (steps + 1) times larger (up to
# explore.MAX_TRAJECTORY_VALUES floats, ~0.8 GB): keep only a few of those
@st.cache_resource(show_spinner=False, max_entries=32)
def _endpoint_cells(*request):
    return _simulate(*request)


@st.cache_resource(show_spinner=False, max_entries=3)
def _trajectory_cells(*request):
    return _simulate(*request)


def _cells(path, stamp, perturbation, cell_type, n_cells, seed, steps, trajectory):
    cache = _trajectory_cells if trajectory else _endpoint_cells
    return cache(path, stamp, perturbation, cell_type, n_cells, seed, steps, trajectory)


def condition_cells(
    run, perturbation: str, cell_type: str, *, n_cells=None, seed=0, steps=None, trajectory=False
):
    """Control, observed and predicted cells of one condition (`explore.ConditionCells`)."""
    return _cells(*run_key(run), perturbation, cell_type, n_cells, seed, steps, trajectory)


@st.cache_resource(show_spinner=False, max_entries=16)
def _map(path, stamp, perturbations, cell_type, seed):
    from departures_core import explore

    run = _open_run(path, stamp)
    return _on_disk(path, stamp).get(
        "map",
        (perturbations, cell_type, seed),
        lambda: explore.cell_map(run, list(perturbations), cell_type, seed=seed),
        explore.map_codec(run),
    )


def cell_map(run, perturbations, cell_type: str, *, seed: int = 0):
    """The UMAP fitted on the control cells of ``cell_type`` and the observed cells of
    ``perturbations`` (`explore.CellMap`)."""
    return _map(*run_key(run), tuple(sorted(perturbations)), cell_type, seed)


@st.cache_resource(show_spinner=False, max_entries=64)
def _placed(path, stamp, perturbations, cell_type, seed, cells_key, what):
    """Coordinates of one cell set of a condition on a map (cached: ``transform`` is slow)."""
    request = (perturbations, cell_type, seed, cells_key, what)
    return _on_disk(path, stamp).get(
        "placed",
        request,
        lambda: _place(path, stamp, perturbations, cell_type, seed, cells_key, what),
    )


def _place(path, stamp, perturbations, cell_type, seed, cells_key, what):
    cmap = _map(path, stamp, perturbations, cell_type, seed)
    cells = _cells(path, stamp, *cells_key)
    data = _open_run(path, stamp).data
    cond = data.find(cells.perturbation, cells.cell_type)
    if what == "control":
        return cmap.coords_of(cells.control_rows, data.x[cells.control_rows])
    if what == "observed":
        return cmap.coords_of(cond.perturbed, cells.observed)
    if what == "predicted":
        return cmap.place(cells.predicted)
    raise ValueError(what)


def placed(run, cmap, cells, what: str):
    """``what`` ("control" — the start cells —, "observed" or "predicted") of ``cells`` on
    ``cmap``, as an (n, 2) array."""
    key = run_key(run)
    return _placed(*key, cmap.perturbations, cmap.cell_type, cmap.seed, cells.request, what)


@st.cache_data(show_spinner=False, max_entries=16)
def _saved_metrics(path: str, mtime: int) -> pd.DataFrame | None:
    """The run's saved evaluation (eval/metrics.csv, long), read once per version of it."""
    return pd.read_csv(Path(path) / "eval" / "metrics.csv") if mtime else None


@st.cache_resource(show_spinner=False, max_entries=64)
def _scores(path, stamp, request, saved_mtime):
    from departures_core import explore

    run = _open_run(path, stamp)
    return _on_disk(path, stamp).get(
        "scores",
        (request, saved_mtime),
        lambda: explore.condition_scores(
            run, _cells(path, stamp, *request), _saved_metrics(path, saved_mtime)
        ),
        cache.FRAME,
    )


def condition_scores(run, cells) -> pd.DataFrame:
    """Metrics of ``cells``' condition: Departures (these samples), control, mean_shift, and
    the ablations when the run was evaluated with them (wide: methods x metrics)."""
    return _scores(*run_key(run), cells.request, _saved_mtime(run))


def saved_cell_eval(run, perturbation: str, cell_type: str) -> pd.DataFrame | None:
    """cell-eval's metrics of one condition from the run's saved evaluation (`evaluate
    --cell-eval`), wide (methods x metrics); None when it has none."""
    from departures_core import explore

    saved = _saved_metrics(run_key(run)[0], _saved_mtime(run))
    return explore.saved_cell_eval(saved, perturbation, cell_type)


def _saved_mtime(run) -> int:
    """The version of the run's saved evaluation (0: none), which keys what is read off it."""
    saved = Path(run.path) / "eval" / "metrics.csv"
    return saved.stat().st_mtime_ns if saved.is_file() else 0


# ------------------------------------------------------------------ OT couplings
@st.cache_resource(show_spinner=False, max_entries=64)
def _coupling(path, stamp, perturbation, cell_type, epsilon, cost, batch_size, seed):
    from departures_core import couplings

    return couplings.condition_coupling(
        _open_run(path, stamp),
        perturbation,
        cell_type,
        epsilon=epsilon,
        cost=cost,
        batch_size=batch_size,
        seed=seed,
    )


def coupling(run, perturbation: str, cell_type: str, *, epsilon, cost, batch_size, seed):
    """A seeded minibatch of one condition coupled by Sinkhorn and by random pairing
    (`couplings.MinibatchCoupling`)."""
    return _coupling(*run_key(run), perturbation, cell_type, epsilon, cost, batch_size, seed)


@st.cache_resource(show_spinner=False, max_entries=64)
def _minibatch_coords(path, stamp, perturbation, cell_type, batch_size, seed, map_seed):
    from departures_core import couplings, explore

    run = _open_run(path, stamp)

    def compute():
        cond = explore.find_condition(run, perturbation, cell_type)
        cmap = _map(path, stamp, (perturbation,), cell_type, map_seed)
        rows = couplings.minibatch_rows(
            cond.control, cond.perturbed, batch_size=batch_size, seed=seed
        )
        return tuple(cmap.coords_of(r, run.data.x[r]) for r in rows)

    request = (perturbation, cell_type, batch_size, seed, map_seed)
    return _on_disk(path, stamp).get("minibatch", request, compute)


def minibatch_coords(run, perturbation: str, cell_type: str, *, batch_size, seed, map_seed=0):
    """Map positions ``(control, perturbed)`` of the minibatch `coupling` draws with the same
    ``batch_size`` and ``seed``, on `cell_map` ``(run, [perturbation], cell_type, seed=map_seed)``.
    """
    key = (*run_key(run), perturbation, cell_type, batch_size, seed, map_seed)
    return _minibatch_coords(*key)


# ------------------------------------------------------------------ trajectories
@st.cache_resource(show_spinner=False, max_entries=26 * 12)
def _trajectory_frame(path, stamp, perturbations, cell_type, map_seed, cells_key, step):
    """Map positions of a trajectory's cells at time point ``step`` (one frame, cached)."""
    from departures_core import trajectories

    def compute():
        cmap = _map(path, stamp, perturbations, cell_type, map_seed)
        cells = _cells(path, stamp, *cells_key)
        return trajectories.place_frames(cells.simulation, cmap.place, [step])[0]

    request = (perturbations, cell_type, map_seed, cells_key, step)
    return _on_disk(path, stamp).get("frame", request, compute)


def trajectory_frames(run, cmap, cells, steps):
    """Positions of ``cells``' trajectories (simulated with ``trajectory=True``) at time
    points ``steps`` on ``cmap``: shape (len(steps), n_cells, 2). Frames are placed (and
    cached) one by one under a progress bar — ``transform`` takes seconds per thousand cells.
    """
    import numpy as np

    key = (*run_key(run), cmap.perturbations, cmap.cell_type, cmap.seed, cells.request)
    bar = st.progress(0.0, text="Placing the trajectories on the map…")
    out = []
    for i, step in enumerate(steps):
        out.append(_trajectory_frame(*key, int(step)))
        bar.progress((i + 1) / len(steps), text=f"Placed time point {i + 1} of {len(steps)}")
    bar.empty()
    return np.stack(out)
