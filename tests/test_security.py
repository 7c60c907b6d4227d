"""Security: checkpoints cannot run code, nothing unpickles, user names stay in the runs
folder, the server keeps XSRF (and cross-origin) protection, user text is shown as typed."""

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.sidebar import code, escape
from departures_core import io, keys, launch, registry, runs
from departures_core.errors import DeparturesError, RunError
from departures_core.model import CHECKPOINT_FORMAT, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("departures_core", "app", "pages", "bench")


# ------------------------------------------------------------------ checkpoints
class _Payload:
    """Unpickling this creates ``marker``: what a malicious model.pt would do (worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "payload": _Payload(marker)}, path)


def test_payload_is_live_when_unpickled(tmp_path):
    """The checkpoint below really runs code when unpickled: the next test is not vacuous."""
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "model.pt", marker)
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert marker.exists()


def test_malicious_checkpoint_is_refused_without_running(tmp_path, trained):
    run_dir, marker = tmp_path / "copied", tmp_path / "pwned"
    shutil.copytree(trained[0], run_dir)
    _malicious_checkpoint(run_dir / keys.MODEL_FILE, marker)
    with pytest.raises(RunError, match="corrupt or not a Departures checkpoint"):
        load_checkpoint(run_dir / keys.MODEL_FILE)
    with pytest.raises(RunError):
        runs.open_run(run_dir)
    # what the app does before opening: check the folder, read its status, list it
    assert registry.check_run_folder(run_dir) == run_dir.resolve()
    assert registry.status(run_dir).state in ("finished", "stopped")
    assert [r.name for r in registry.list_runs(tmp_path)] == ["copied"]
    assert not marker.exists()


# ------------------------------------------------------------------ the code base
def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _unsafe(tree) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            bad = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
            found += [f"import {n}" for n in names if n.split(".")[0] in bad]
    for node, func, kw in _calls(tree):
        where = f"line {node.lineno}: {func}"
        if func.endswith("torch.load") and not _is_true(kw.get("weights_only")):
            found.append(f"{where} without weights_only=True")
        if func.endswith(("jit.load", "read_pickle", "yaml.load", "yaml.unsafe_load")):
            found.append(where)
        if "allow_pickle" in kw and not (
            isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False
        ):
            found.append(f"{where} with allow_pickle")
        if "unsafe_allow_html" in kw or func in ("st.html", "components.html", "eval", "exec"):
            found.append(where)  # raw HTML into the page, or code from strings
        if _is_true(kw.get("shell")):
            found.append(f"{where} with shell=True")
    return found


def test_scanner_finds_what_it_looks_for():
    bad = """
import pickle
torch.load(p)
torch.load(p, weights_only=False)
np.load(p, allow_pickle=True)
pd.read_pickle(p)
st.markdown(name, unsafe_allow_html=True)
st.html(name)
subprocess.run(cmd, shell=True)
"""
    assert len(_unsafe(ast.parse(bad))) == 8
    good = "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nnet.eval()\n"
    assert _unsafe(ast.parse(good)) == []


def test_code_base_loads_nothing_unsafely_and_renders_no_raw_html():
    files = [f for d in SOURCES for f in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    found = {
        str(f.relative_to(ROOT)): bad
        for f in files
        if (bad := _unsafe(ast.parse(f.read_text(), filename=str(f))))
    }
    assert found == {}


# ------------------------------------------------------------------ user names
EVIL_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "...",
    "",
    "~/.ssh/authorized_keys",
    "..\\..\\windows\\system32",
    "run/../../escape",
    "%2e%2e%2fescape",
    "a\x00b",
    "line\nbreak",
    "x" * 1000,
    "日本語",
    "données-β",
    "\u202egnp.exe",
    "<script>alert(1)</script>",
    "-rf --out=/tmp",
    "uploads",  # the app's own folder
]
REFUSED = "not usable as a name|is reserved"
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_run_names_cannot_leave_the_runs_folder(tmp_path, name):
    try:
        path = registry.run_path(tmp_path, name)
    except DeparturesError as exc:
        assert re.search(REFUSED, str(exc))
        return
    assert path.parent == tmp_path.resolve() and SAFE.fullmatch(path.name)
    path.mkdir()  # a name the file system takes


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_uploads_and_launches_stay_in_the_runs_folder(tmp_path, monkeypatch, name):
    """Stage an upload named ``name`` and launch a run named ``name`` with a copy of it
    (the training process stubbed out): every file lands inside the runs folder."""
    runs_dir = tmp_path / "runs"
    spawned = []
    monkeypatch.setattr(launch, "_spawn", lambda run_dir, argv, info: spawned.append(argv) or 1)
    config = launch.make_config(io.ObsKeys("condition", "control"))
    try:
        staged = launch.stage_upload(b"\x89HDF\r\n\x1a\n", name, runs_dir / registry.UPLOADS)
        assert staged.parent.parent == (runs_dir / registry.UPLOADS)
        assert SAFE.fullmatch(staged.name)
        run_dir = launch.launch(runs_dir, name, config, staged, dataset=name, copy_data=True)
    except DeparturesError as exc:
        assert re.search(REFUSED, str(exc))
    else:
        assert run_dir.parent == runs_dir.resolve() and SAFE.fullmatch(run_dir.name)
        assert spawned[0][0].startswith(str(run_dir))  # the data path: the run's own copy
    outside = [p for p in tmp_path.rglob("*") if not p.resolve().is_relative_to(runs_dir)]
    assert outside == []


def test_a_link_in_the_runs_folder_cannot_redirect_a_run(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "mine").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DeparturesError, match="points outside the runs folder"):
        registry.run_path(tmp_path / "runs", "mine")


def test_refused_upload_names_leave_no_partial_file(tmp_path):
    with pytest.raises(DeparturesError):
        launch.stage_upload(b"0" * 1000, "..", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the server
def test_config_keeps_xsrf_and_cors_protection():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is True


def _ws_status(port: int, origin: str) -> int:
    """HTTP status of a WebSocket upgrade to the app's stream sent from page ``origin``."""
    request = (
        "GET /_stcore/stream HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return int(s.recv(1024).split(b" ")[1])


def test_started_server_refuses_uploads_without_token_and_other_origins(tmp_path):
    """``streamlit run app/Home.py`` from the repository root, as a user starts it (only
    headless and the port given): the config file's protection is on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "streamlit", "run", "app/Home.py"]
    cmd += ["--server.headless=true", f"--server.port={port}", "--server.address=127.0.0.1"]
    env = {**os.environ, "DEPARTURES_RUNS_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, "server did not start"
                time.sleep(0.3)
        put = urllib.request.Request(
            f"{url}/_stcore/upload_file/some-session/some-file", data=b"x", method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=10)
        assert refused.value.code == 403 and b"XSRF" in refused.value.read()
        assert _ws_status(port, "http://evil.example") == 403
        assert _ws_status(port, url) == 101
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


# ------------------------------------------------------------------ user text on the page
EVIL = "<img src=x onerror=alert(1)>"
LABELS = [EVIL, "**bold**", "[link](https://e.x)", "$x^2$ :red[red]", "`tick`"]
MARKUP = ("<img", "**bold**", "[link](", "$x", ":red[", "`tick`")  # active if not escaped
ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


def _markup(body: str) -> str:
    """What of ``body`` Markdown would act on: backslash escapes and code spans removed."""
    return CODE_SPAN.sub("", ESCAPED.sub("", body))


def _bodies(at: AppTest) -> list[str]:
    kinds = ("markdown", "caption", "title", "header", "subheader")
    kinds += ("info", "warning", "error", "success")
    return [str(e.value) for kind in kinds for e in getattr(at, kind)]


def _toy_h5ad(path: Path) -> bytes:
    labels = ["control"] * 8 + [lab for lab in LABELS for _ in range(4)]
    x = np.random.default_rng(0).poisson(1.0, size=(len(labels), 12)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(12)])).write_h5ad(path)
    return path.read_bytes()


def _run_of_evil_names(runs_dir: Path) -> Path:
    """A run folder (copied from elsewhere: any name) whose training failed on odd labels."""
    run_dir = runs_dir / f"{EVIL} `x **bold**"  # an odd backtick: naive `{name}` breaks
    run_dir.mkdir(parents=True)
    (run_dir / keys.SPLIT_FILE).write_text(json.dumps({"holdout": LABELS}))
    (run_dir / registry.LAUNCH_FILE).write_text(json.dumps({"returncode": 1}))
    failed = {"state": "failed", "error": f"no cells of {EVIL} **bold**"}
    (run_dir / keys.PROGRESS_FILE).write_text(json.dumps(failed))
    return run_dir


def test_markup_model():
    assert _markup(escape(f"{EVIL} **bold** `tick`")) == "img srcx onerroralert1 bold tick"
    for text in LABELS + ["a``b`", "` x `", ""]:
        assert not any(m in _markup(code(text)) for m in MARKUP)
    assert code("a``b") == "```a``b```" and code("`x`") == "`` `x` ``"


def test_user_text_is_shown_as_typed(tmp_path, monkeypatch):
    """A dataset whose file name and perturbation labels, and a run whose folder name, held
    out labels and error hold HTML and Markdown: Home, Train and the sidebar show them
    escaped (Markdown acts on none of it; raw HTML is never enabled)."""
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv(registry.RUNS_ENV, str(runs_dir))
    run_dir = _run_of_evil_names(runs_dir)
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60).run()
    at.switch_page("../pages/data.py").run()
    data = _toy_h5ad(tmp_path / "toy.h5ad")
    at.file_uploader(key="upload").upload(f"{EVIL} **bold**.h5ad", data, "application/x-hdf5")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "bold" in " ".join(str(c.value) for c in at.sidebar.caption)
    sidebar = [str(c.value) for c in at.sidebar.caption]
    at.sidebar.selectbox[0].set_value(str(run_dir)).run()
    seen = []
    for page in ("home", "train"):
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        seen += _bodies(at)
    shown = [b for b in sidebar + seen if "bold" in b or "img" in b]
    # sidebar dataset; Home: dataset, run; Train: run heading, error, held-out labels
    assert len(shown) >= 6, shown
    assert [b for b in shown if any(m in _markup(b) for m in MARKUP)] == []
