"""Session state and cached resources of the app: the only module that touches either.

Objects returned by the ``st.cache_*`` functions here are shared by every browser session:
read them, never modify them (take a ``.copy()`` first).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pandas as pd
import streamlit as st

from departures_core import embedding, io, launch, registry
from departures_core.errors import DeparturesError

DATASET, OBS_KEYS, RUN, RUNS_DIR, DROP_RARE = "dataset", "obs_keys", "run", "runs_dir", "drop_rare"
PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"


@dataclass(frozen=True)
class Dataset:
    """The dataset a session works on: a bundled file or a staged upload."""

    name: str
    path: str
    kind: str  # "bundled" or "upload"
    key: str  # embedding.fingerprint(path): changes when the file does

    @property
    def is_demo(self) -> bool:
        return Path(self.path) == io.DEMO_PATH

    @property
    def short(self) -> str:
        """A short name to start run names with."""
        return "demo" if self.is_demo else Path(self.path).stem[:24]


def init() -> None:
    st.session_state.setdefault(RUNS_DIR, str(registry.default_runs_dir()))
    st.session_state.setdefault(DATASET, None)
    st.session_state.setdefault(OBS_KEYS, None)
    st.session_state.setdefault(RUN, None)
    st.session_state.setdefault(DROP_RARE, False)


# ------------------------------------------------------------------ cached resources
@st.cache_resource(show_spinner="Reading the dataset…", max_entries=4)
def _read(path: str, fingerprint: str) -> ad.AnnData:  # fingerprint: re-read a changed file
    return io.read(path)


@st.cache_resource(show_spinner=False)
def _precomputed(path: str, fingerprint: str) -> embedding.Embedding:
    return embedding.Embedding.load(path)


@st.cache_resource(show_spinner=False)
def _jobs() -> embedding.EmbeddingJobs:
    return embedding.EmbeddingJobs()


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Start compiling the UMAP code in the background, once per server process, so that
    the first map a user opens does not wait for numba (see `explore.warm_up`)."""

    def compile_umap() -> None:
        from departures_core import explore

        explore.warm_up()

    thread = threading.Thread(target=compile_umap, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner="Looking for a GPU…")
def gpu_name() -> str | None:
    """The CUDA GPU training would use, or None.

    Without an NVIDIA driver there is no CUDA device: answer at once rather than import
    torch (2-3 s) on the first page a user sees.
    """
    if not Path("/proc/driver/nvidia").exists() and shutil.which("nvidia-smi") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def device_label() -> str:
    """The device ``auto`` trains on, in words."""
    gpu = gpu_name()
    return f"GPU · {gpu}" if gpu else f"CPU · {os.cpu_count()} cores (no CUDA GPU found)"


@st.cache_data(show_spinner=False, max_entries=8)
def cell_counts(ds: Dataset, keys: io.ObsKeys) -> pd.DataFrame:
    """Cells per perturbation and cell type (a copy per caller: safe to sort or edit)."""
    from departures_core import figures

    return figures.cell_counts(_read(ds.path, ds.key), keys)


@st.cache_data(show_spinner=False, max_entries=8)
def genes_by_variance(ds: Dataset) -> list[str]:
    from departures_core import figures

    return figures.genes_by_variance(_read(ds.path, ds.key))


# ------------------------------------------------------------------ dataset
def bundled() -> dict[str, Path]:
    """Bundled datasets by display name, the demo first."""
    files = sorted(io.ASSETS.glob("*.h5ad"), key=lambda p: p != io.DEMO_PATH)
    return {
        ("Demo: PerturBench (Norman 2019 + McFaline 2023)" if p == io.DEMO_PATH else p.stem): p
        for p in files
    }


def dataset() -> Dataset | None:
    """The session's dataset (forgotten when its file has been removed)."""
    ds = st.session_state.get(DATASET)
    if ds is not None and not Path(ds.path).is_file():
        st.session_state[DATASET] = ds = None
    return ds


def adata() -> ad.AnnData | None:
    """The session's AnnData (shared, read-only), or None."""
    ds = dataset()
    return None if ds is None else _read(ds.path, ds.key)


def obs_keys() -> io.ObsKeys | None:
    return st.session_state.get(OBS_KEYS)


def set_obs_keys(keys: io.ObsKeys) -> None:
    st.session_state[OBS_KEYS] = keys


def open_dataset(name: str, path: str | Path, kind: str) -> Dataset:
    """Make ``path`` the session's dataset; raises `DeparturesError` for unreadable files.

    obs keys are auto-detected (the demo's are known). When detection fails the keys are left
    unset and the reason is kept under the "detect" slot, so the user can map them.
    """
    ds = Dataset(name, str(path), kind, embedding.fingerprint(path))
    data = _read(ds.path, ds.key)
    st.session_state[DATASET] = ds
    st.session_state[DROP_RARE] = False
    keys = io.DEMO_KEYS if ds.is_demo else attempt("detect", io.detect_keys, data)
    st.session_state[OBS_KEYS] = keys
    return ds


def load_demo() -> Dataset:
    return open_dataset(next(iter(bundled())), io.DEMO_PATH, "bundled")


def attempt(slot: str, action, *args, **kwargs):
    """Call ``action``; keep its `DeparturesError` message under ``slot`` until the next call.

    Usable as a widget callback; the page shows the message with `error`.
    """
    try:
        result = action(*args, **kwargs)
        st.session_state[f"error:{slot}"] = None
        return result
    except DeparturesError as exc:
        st.session_state[f"error:{slot}"] = str(exc)
        return None


def error(slot: str) -> None:
    """Show the message `attempt` kept under ``slot``, if any."""
    if msg := st.session_state.get(f"error:{slot}"):
        st.error(msg, icon=":material/error:")


def load_upload(uploaded) -> Dataset:
    """Stage a ``st.file_uploader`` file under the runs folder and open it."""
    path = launch.stage_upload(uploaded, uploaded.name, runs_dir() / registry.UPLOADS)
    return open_dataset(uploaded.name, path, "upload")


def embedding_for(ds: Dataset, *, retry: bool = False) -> embedding.Embedding | embedding.Job:
    """The dataset's UMAP: shipped with it, cached on disk, or a background job's status."""
    data = _read(ds.path, ds.key)
    if ds.is_demo and embedding.DEMO_EMBEDDING.exists():
        pre = _precomputed(
            str(embedding.DEMO_EMBEDDING), embedding.fingerprint(embedding.DEMO_EMBEDDING)
        )
        if embedding.matches(pre, data):
            return pre
    job = _jobs().submit(
        ds.key, data, cache_path=runs_dir() / ".cache" / f"umap-{ds.key}.npz", retry=retry
    )
    return job.result if job.done and job.result is not None else job


# ------------------------------------------------------------------ runs
def runs_dir() -> Path:
    return Path(st.session_state.get(RUNS_DIR) or registry.default_runs_dir()).expanduser()


def current_run() -> Path | None:
    """The selected run folder (forgotten when it has been deleted)."""
    path = st.session_state.get(RUN)
    if path and not Path(path).is_dir():
        st.session_state[RUN] = path = None
    return Path(path) if path else None


def set_run(path: str | Path | None) -> None:
    st.session_state[RUN] = str(path) if path else None


def open_run_folder(path: str) -> None:
    """Select a run folder given by path (e.g. trained elsewhere); raises `RunError`."""
    set_run(registry.check_run_folder(path))


def start_training(name: str, config) -> Path:
    """Check the session's dataset against ``config``, launch the run and select it."""
    ds, data = dataset(), adata()
    if config.train.device == "cuda" and gpu_name() is None:
        raise DeparturesError("No CUDA GPU is available here; choose 'auto' or 'cpu'.")
    launch.check_dataset(
        data, obs_keys(), min_cells=config.data.min_cells, drop_rare=config.data.drop_rare
    )
    run_dir = launch.launch(
        runs_dir(), name, config, ds.path, dataset=ds.name, copy_data=ds.kind == "upload"
    )
    set_run(run_dir)
    return run_dir


def live_history(run_dir: Path, status: registry.RunStatus) -> pd.DataFrame:
    """history.csv plus the steps seen in progress.json since its last write (this session)."""
    hist = registry.history(run_dir)
    points = st.session_state.setdefault(f"live:{run_dir}", [])
    if (
        status.step
        and status.loss_cont is not None
        and (not points or points[-1]["step"] < status.step)
    ):
        points.append(
            {
                "step": status.step,
                "epoch": status.epoch,
                "loss_cont": status.loss_cont,
                "loss_disc": status.loss_disc,
            }
        )
    last = int(hist["step"].max()) if len(hist) else 0
    newer = [p for p in points if p["step"] > last]
    return pd.concat([hist, pd.DataFrame(newer)], ignore_index=True) if newer else hist


def show_error(exc: DeparturesError) -> None:
    st.error(str(exc), icon=":material/error:")


# ------------------------------------------------------------------ exploration of a trained run
# Everything below is cached per run folder and its checkpoint's stamp (size + mtime), so
# training more epochs invalidates it, and shared by every session: read, never modify.
def _stamp(run_dir: Path) -> str:
    st_ = (run_dir / "model.pt").stat()
    return f"{st_.st_size}-{st_.st_mtime_ns}"


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def _open_run(path: str, stamp: str):
    from departures_core import runs

    return runs.open_run(path)


def trained_run():
    """The selected run, opened (`runs.Run`), or None after telling the user what to do.

    Pages call ``st.stop()`` on None. A corrupt or old run folder is reported, not fatal.
    """
    run_dir = current_run()
    if run_dir is None:
        st.info(
            "Pick a trained run in the sidebar, or train one on the Train page.",
            icon=":material/info:",
        )
        st.page_link(
            str(PAGES_DIR / "train.py"), label="Go to Train", icon=":material/model_training:"
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
        show_error(exc)
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

    return explore.condition_cells(
        _open_run(path, stamp),
        perturbation,
        cell_type,
        n_cells=n_cells,
        seed=seed,
        steps=steps,
        trajectory=trajectory,
        device="auto",
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

    return explore.cell_map(_open_run(path, stamp), list(perturbations), cell_type, seed=seed)


def cell_map(run, perturbations, cell_type: str, *, seed: int = 0):
    """The UMAP fitted on the control cells of ``cell_type`` and the observed cells of
    ``perturbations`` (`explore.CellMap`)."""
    return _map(*run_key(run), tuple(sorted(perturbations)), cell_type, seed)


@st.cache_resource(show_spinner=False, max_entries=64)
def _placed(path, stamp, perturbations, cell_type, seed, cells_key, what):
    """Coordinates of one cell set of a condition on a map (cached: ``transform`` is slow)."""
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


def saved_metrics(run) -> pd.DataFrame | None:
    """The run's evaluation (``RUN/eval/metrics.csv``, written by ``evaluate``), if any."""
    path = Path(run.path) / "eval" / "metrics.csv"
    if not path.is_file():
        return None
    return _read_metrics(str(path), path.stat().st_mtime_ns)


@st.cache_data(show_spinner=False, max_entries=8)
def _read_metrics(path: str, mtime: int) -> pd.DataFrame:
    return pd.read_csv(path)


@st.cache_resource(show_spinner=False, max_entries=64)
def _scores(path, stamp, request, saved_mtime):
    from departures_core import explore

    run = _open_run(path, stamp)
    saved = Path(path) / "eval" / "metrics.csv"
    return explore.condition_scores(
        run, _cells(path, stamp, *request), pd.read_csv(saved) if saved_mtime else None
    )


def condition_scores(run, cells) -> pd.DataFrame:
    """Metrics of ``cells``' condition: Departures (these samples), control, mean_shift, and
    the ablations when the run was evaluated with them (wide: methods x metrics)."""
    saved = Path(run.path) / "eval" / "metrics.csv"
    mtime = saved.stat().st_mtime_ns if saved.is_file() else 0
    return _scores(*run_key(run), cells.request, mtime)


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
    cond = explore.find_condition(run, perturbation, cell_type)
    cmap = _map(path, stamp, (perturbation,), cell_type, map_seed)
    rows = couplings.minibatch_rows(cond.control, cond.perturbed, batch_size=batch_size, seed=seed)
    return tuple(cmap.coords_of(r, run.data.x[r]) for r in rows)


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

    cmap = _map(path, stamp, perturbations, cell_type, map_seed)
    cells = _cells(path, stamp, *cells_key)
    return trajectories.place_frames(cells.simulation, cmap.place, [step])[0]


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
