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
FIRST_VISIT, AUTO_PICKED = "first_visit", "auto_picked_run"
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
    if not st.session_state.get(FIRST_VISIT):  # a new session opens ready to explore
        st.session_state[FIRST_VISIT] = True
        if st.session_state[DATASET] is None:
            attempt("demo", load_demo)
        installed_demo_run(str(runs_dir()))
        pick_latest_run()


@st.cache_resource(show_spinner=False)
def installed_demo_run(folder: str) -> str | None:
    """Install the shipped demo run (`demo.install`) into an empty runs folder, once per
    server process and folder."""
    from departures_core import demo

    try:
        target = demo.install(folder)
    except OSError:  # a read-only or full disk: the app works without it
        return None
    return str(target) if target else None


def pick_latest_run() -> None:
    """With no run chosen in this session, open the most recently finished one and say so
    (`auto_picked`)."""
    if st.session_state.get(RUN):
        return
    finished = [r for r in registry.list_runs(runs_dir()) if r.status.state == "finished"]
    if finished:
        st.session_state[RUN] = str(finished[0].path)
        st.session_state[AUTO_PICKED] = finished[0].name


def auto_picked() -> str | None:
    """The run `pick_latest_run` opened, while it is still the one shown."""
    name = st.session_state.get(AUTO_PICKED)
    current = current_run()
    return name if name and current is not None and current.name == name else None


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


WARM_UP = "departures-warm-up"  # thread name prefix
VIEW_MODULES = (  # what the exploration views import (torch comes with explore)
    "departures_core.explore",
    "departures_core.explore_figures",
    "departures_core.couplings",
    "departures_core.trajectories",
    "departures_core.activation",
    "pandas.io.formats.style",  # st.dataframe(df.style): imports matplotlib, ~0.7 s
)


@st.cache_resource(show_spinner=False)
def warm_up(umap: bool = True) -> threading.Thread:
    """Prepare this server process in the background, once per value of ``umap``: load the
    code the exploration views run (torch, the model, plotly's figure classes, POT: 5-10 s
    on 2 cores) and, with ``umap``, compile the UMAP code (numba: about a minute, see
    `explore.warm_up`), so that the first view a user opens waits for neither.

    Home asks for the compile only when the session's run has no map in the disk cache: a
    process that draws its views from there never needs it, and a compile in the background
    would halve the speed of every render meanwhile (it holds the GIL).
    """

    def prepare() -> None:
        import importlib

        import plotly.graph_objects as go

        from departures_core.figures import LAYOUT

        for module in VIEW_MODULES:
            importlib.import_module(module)
        for trace in (go.Scatter, go.Scattergl, go.Bar, go.Violin, go.Heatmap):
            go.Figure(trace(), layout=LAYOUT)  # plotly loads its validators on first use
        if umap:
            from departures_core import explore

            explore.warm_up()
        importlib.import_module("ot")  # POT, for Sinkhorn on the OT couplings view: ~5 s

    thread = threading.Thread(target=prepare, name=f"{WARM_UP}-{umap}", daemon=True)
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
    st.session_state[AUTO_PICKED] = None


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
