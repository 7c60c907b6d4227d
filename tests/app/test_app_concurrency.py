"""Several users at once: two sessions loading data, browsing a run and training at the
same time see only their own dataset, run and choices, and no view modifies the objects
the cached functions share between sessions. Driven through AppTest in two threads and
through two browser contexts on one server."""

import dataclasses
import hashlib
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest.mock import MagicMock

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from app_helpers import goto, texts
from streamlit import config
from streamlit.runtime import Runtime
from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import app_test
from streamlit.testing.v1.util import build_mock_config_get_option
from test_app_browser import ARGS, CHROMIUM, _require_browser, server  # noqa: F401

from app import run_state, state
from departures_core import io, launch

# every st.cache_resource function of app/state.py and app/run_state.py the views read
SHARED = (
    "_read", "_precomputed", "_open_run", "conditions", "_endpoint_cells", "_trajectory_cells",
    "_map", "_placed", "_scores", "_coupling", "_minibatch_coords", "_trajectory_frame",
)  # fmt: skip


# ------------------------------------------------------------------ two sessions at once
@pytest.fixture
def parallel(monkeypatch):
    """Let AppTest sessions run in parallel threads, as a server runs its sessions.

    Each ``AppTest.run`` installs a mock runtime and patches ``config.get_option`` for the
    length of the run, then removes them: a run ending in one thread would pull them from
    under the other. Here one mock runtime stays installed and the per-run swap lands on a
    subclass nobody reads.
    """
    runtime = MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    monkeypatch.setattr(Runtime, "_instance", runtime)
    monkeypatch.setattr(app_test, "Runtime", type("PerRunRuntime", (Runtime,), {}))
    monkeypatch.setattr(
        config, "get_option", build_mock_config_get_option({"global.appTest": True})
    )

    def together(*sessions):
        """Drive each session (a generator) in its own thread; their steps start together."""
        barrier = threading.Barrier(len(sessions), timeout=300)

        def drive(session):
            try:
                for _ in session:
                    barrier.wait()
            except BaseException:
                barrier.abort()
                raise

        with ThreadPoolExecutor(len(sessions)) as pool:
            futures = [pool.submit(drive, s) for s in sessions]
        errors = [f.exception() for f in futures if f.exception()]
        errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))  # the cause first
        if errors:
            raise errors[0]

    return together


def _digest(obj, h=None):
    """A hash of everything a view could modify in ``obj`` (arrays, frames, fields)."""
    h = h or hashlib.sha1()
    h.update(type(obj).__name__.encode())
    if isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(repr(obj.tolist()).encode() if obj.dtype == object else obj.tobytes())
    elif isinstance(obj, torch.Tensor):
        _digest(obj.detach().cpu().numpy(), h)
    elif isinstance(obj, torch.nn.Module):
        _digest(dict(obj.state_dict()), h)
    elif sp.issparse(obj):
        for part in (obj.data, obj.indices, obj.indptr):
            _digest(part, h)
    elif isinstance(obj, pd.DataFrame | pd.Series):
        h.update(pd.util.hash_pandas_object(obj).to_numpy().tobytes())
        h.update(repr(obj.to_dict() if isinstance(obj, pd.Series) else obj.dtypes).encode())
    elif isinstance(obj, ad.AnnData):
        for part in (obj.X, obj.obs, obj.var, dict(obj.obsm), dict(obj.layers), obj.uns):
            _digest(part, h)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _digest(item, h)
    elif isinstance(obj, str | int | float | bool | Path | type(None)):
        h.update(repr(obj).encode())
    elif dataclasses.is_dataclass(obj):
        _digest({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, h)
    elif type(obj).__module__.startswith("departures_core"):
        _digest(vars(obj), h)
    return h.hexdigest()  # anything else (a fitted UMAP, a PCA) is opaque: its type only


@pytest.fixture
def shared_objects(monkeypatch):
    """Record each object the cached functions hand out with its digest when first handed
    out: ``{id: (function, object, digest)}``; compare with `_digest` afterwards."""
    seen, lock = {}, threading.Lock()

    def spy(name, cached):
        def wrapper(*args, **kwargs):
            obj = cached(*args, **kwargs)
            with lock:
                if id(obj) not in seen:
                    seen[id(obj)] = (name, obj, _digest(obj))
            return obj

        return wrapper

    for name in SHARED:
        module = state if hasattr(state, name) else run_state
        monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    return seen


def test_digest_sees_a_change():
    x = np.zeros((3, 4), np.float32)
    before = _digest({"x": x, "frame": pd.DataFrame({"a": [1, 2]})})
    x[0, 0] += 1
    assert _digest({"x": x, "frame": pd.DataFrame({"a": [1, 2]})}) != before


def _toy(path: Path) -> bytes:
    labels = ["control"] * 8 + ["KO_A"] * 6 + ["KO_B"] * 6
    x = np.random.default_rng(1).poisson(1.5, size=(len(labels), 30)).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": labels, "cell_type": "K562"}, index=[f"c{i}" for i in range(len(labels))]
    )
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(30)])).write_h5ad(path)
    return path.read_bytes()


def _shown(elements) -> str:
    """The text of Markdown ``elements`` as displayed (backslash escapes resolved)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", texts(elements))


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_two_sessions_at_once_keep_apart_and_shared_objects_stay_intact(
    app, trained, runs_dir, tmp_path, monkeypatch, parallel, shared_objects
):
    """A loads the demo, picks the trained run and opens Activation, OT couplings and
    Perturbations while B uploads another dataset, starts training on it and opens Home and
    Perturbations, step for step at the same time. Each sees only its own dataset, run and
    choices; no object the cached functions share changes."""
    shutil.copytree(trained[0], runs_dir / "tiny")
    # the training process itself is tested in test_app_launch; here only who sees the run
    monkeypatch.setattr(launch, "_spawn", lambda run_dir, argv, info: 0)
    toy = _toy(tmp_path / "toy_screen.h5ad")
    sessions = {}

    def user_a():
        sessions["a"] = at = _ok(app())
        at.default_timeout = 300  # the first UMAP of the process compiles numba (~60 s)
        yield
        next(b for b in at.button if b.label == "Load the demo dataset").click()
        _ok(at.run())  # loads the demo, goes to Data
        yield
        _ok(at.sidebar.selectbox[0].set_value(str(runs_dir / "tiny")).run())
        yield
        _ok(goto(at, "activation"))
        yield
        _ok(goto(at, "couplings"))
        yield
        _ok(goto(at, "perturbations"))

    def user_b():
        sessions["b"] = at = _ok(app())
        at.default_timeout = 300
        yield
        _ok(goto(at, "data"))
        yield
        at.file_uploader(key="upload").upload("toy_screen.h5ad", toy, "application/x-hdf5")
        _ok(at.run())
        yield
        _ok(goto(at, "train"))
        next(t for t in at.text_input if t.label == "Run name").set_value("b-run")
        next(b for b in at.button if b.label == "Start training").click()
        _ok(at.run())
        yield
        _ok(goto(at, "home"))
        yield
        _ok(goto(at, "perturbations"))

    parallel(user_a(), user_b())
    a, b = sessions["a"], sessions["b"]

    ds_a, ds_b = a.session_state[state.DATASET], b.session_state[state.DATASET]
    assert ds_a.is_demo and a.session_state[state.OBS_KEYS] == io.DEMO_KEYS
    assert ds_b.name == "toy_screen.h5ad" and ds_b.kind == "upload"
    assert b.session_state[state.OBS_KEYS].perturbation_key == "perturbation"
    assert a.session_state[state.RUN] == str(runs_dir / "tiny")
    assert b.session_state[state.RUN] == str(runs_dir / "b-run")
    assert "pick:perturbations" in a.session_state and "pick:perturbations" not in b.session_state

    assert "Demo: PerturBench" in _shown(a.sidebar.caption)
    assert "toy_screen" not in _shown(a.sidebar.caption)
    assert "toy_screen.h5ad · 20 cells" in _shown(b.sidebar.caption)
    assert a.sidebar.selectbox[0].value == str(runs_dir / "tiny")
    assert b.sidebar.selectbox[0].value == str(runs_dir / "b-run")
    assert "Run `tiny`" in texts(a.caption)  # A's Perturbations view
    assert "Run `b-run` has no saved model yet" in texts(b.info)  # B's: B's own new run

    handed_out = {name for name, _, _ in shared_objects.values()}
    assert {"_read", "_precomputed", "_open_run", "conditions", "_endpoint_cells"} <= handed_out
    assert {"_map", "_placed", "_scores", "_coupling", "_minibatch_coords"} <= handed_out
    changed = [name for name, obj, digest in shared_objects.values() if _digest(obj) != digest]
    assert changed == []


# ------------------------------------------------------------------ in a real browser
EVIL = "<img src=x onerror=alert(1)> **bold**"


def test_two_browsers_at_once_keep_apart(server, trained):  # noqa: F811
    """Two people on one server, with one run whose folder name holds HTML and Markdown: both
    open on the demo with that run picked; A chooses no run, B keeps it. Each sees only
    their own choice; B's run name is shown as typed and nothing of it runs."""
    sync_playwright = _require_browser()
    from playwright.sync_api import expect

    url, runs_dir = server
    runs_dir.mkdir(exist_ok=True)
    shutil.copytree(trained[0], runs_dir / f"tiny {EVIL}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            a, b = (browser.new_context().new_page() for _ in range(2))
            dialogs = []
            for page in (a, b):
                page.set_default_timeout(60_000)
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(url)
            # both open on the demo and the latest finished run (the only one); A then
            # chooses no run, B keeps it
            side_a, side_b = (p.get_by_test_id("stSidebar") for p in (a, b))
            for side in (side_a, side_b):
                expect(side.get_by_text("Demo: PerturBench")).to_be_visible()
            picker_a = side_a.get_by_test_id("stSelectbox").first
            picker_a.click()
            a.get_by_role("option", name="none").first.click()
            expect(picker_a.get_by_role("combobox")).to_have_value("none")
            expect(a.get_by_text("None selected.")).to_be_visible()  # A's Home: no run
            picker_b = side_b.get_by_test_id("stSelectbox").first
            expect(picker_b.get_by_role("combobox")).to_have_value(f"tiny {EVIL} (finished)")
            expect(side_b.get_by_text("opened for you")).to_be_visible()
            b.reload()  # B's next visit: still B's own choice, whatever A did
            picker_b = b.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first
            expect(picker_b.get_by_role("combobox")).to_have_value(f"tiny {EVIL} (finished)")
            main_b = b.get_by_test_id("stMainBlockContainer")
            expect(main_b.get_by_text(f"tiny {EVIL}").first).to_be_visible()  # B's Run box
            assert b.locator("img[src='x']").count() == 0 and dialogs == []
            assert b.locator("strong", has_text="bold").count() == 0
        finally:
            browser.close()
