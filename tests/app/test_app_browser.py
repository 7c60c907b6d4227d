"""The real thing in a real browser: `streamlit run app/Home.py`, upload a bad file and a
good one, train, stop, resume, visit every view. Headless Chromium from Debian (/usr/bin/chromium)
driven by Playwright; skipped when either is missing unless DEPARTURES_REQUIRE_BROWSER=1."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_helpers import HOME, ROOT

from departures_core import launch, registry

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser():
    try:
        from playwright.sync_api import expect, sync_playwright

        # assertions wait as long as actions: two cores under the suite's load can take
        # longer than expect()'s default 5 s to draw a page
        expect.set_options(timeout=60_000)
    except ImportError:
        sync_playwright, why = None, "playwright is missing (pip install -r requirements-dev.txt)"
    else:
        why = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    if why:
        if os.environ.get("DEPARTURES_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {why}")
        pytest.skip(why)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _streamlit(tmp_path, runs_dir, name: str = "streamlit"):
    """The URL of a fresh Streamlit server process on ``runs_dir``; stopped (with its process
    group) on exit."""
    port = _free_port()
    env = {**os.environ, "DEPARTURES_RUNS_DIR": str(runs_dir)}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(HOME),
        "--server.headless=true",
        f"--server.port={port}",
        "--server.address=127.0.0.1",
        "--browser.gatherUsageStats=false",
    ]
    log_path = tmp_path / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError(log_path.read_text()) from None
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # e.g. busy compiling numba: do not hang the suite
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, runs_dir)`` of one Streamlit server on an empty runs folder, shared by this
    module's tests in file order (a fresh start first); stopped after them. One server pays
    umap's numba compile once."""
    tmp_path = tmp_path_factory.mktemp("browser")
    runs_dir = tmp_path / "runs"
    with _streamlit(tmp_path, runs_dir) as url:
        yield url, runs_dir


def test_a_fresh_start_draws_every_view_and_follows_links(server):
    """A fresh server on an empty runs folder opens the shipped demo run and draws every view
    of it, writing the exploration views' results to the disk cache (that a restart then
    reads them all, drawing the same figures, is tests/app/test_app_cache.py). Then links for
    talks: a bad one explained, a deep one drawn."""
    sync_playwright = _require_browser()
    from playwright.sync_api import expect

    url, runs_dir = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(120_000)
            _visit(page, url, VIEWS)
            picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
            expect(picker.first.get_by_role("combobox")).to_have_value("demo (finished)")
            page.get_by_text("The most recently finished run, opened for you").wait_for()
            entries = (runs_dir / ".cache" / "runs").rglob("*.npz")
            assert any(entries), "the server wrote nothing to the disk cache"
            _follow_links(page, url)
        finally:
            browser.close()


def test_upload_train_stop_resume_and_visit_every_view(server, tmp_path):
    """A user's whole journey in a real browser: a bad upload gets a message, a good one
    loads; training starts, stops, resumes and finishes; every page then renders without
    an exception box."""
    sync_playwright = _require_browser()
    from playwright.sync_api import expect

    url, runs_dir = server
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"cell,gene\n1,2\n")
    good = tmp_path / "my_screen.h5ad"
    shutil.copy(ROOT / "assets" / "perturbench_devel_norman19_mcfaline23.h5ad", good)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)
            with _explained(page, runs_dir):
                page.goto(url)
                page.get_by_role("link", name="Data", exact=True).click()
                upload = page.locator('input[type="file"]')
                upload.set_input_files(str(bad))
                page.get_by_text("not an .h5ad file").wait_for()
                assert page.locator('[data-testid="stException"]').count() == 0
                upload.set_input_files(str(good))
                page.get_by_text("Ready to train").wait_for(timeout=120_000)
                expect(page.get_by_text("not an .h5ad file")).to_have_count(0)
                _settle(page, "the loaded dataset")

                page.get_by_role("link", name="Train", exact=True).click()
                page.get_by_role("heading", name="Start a new run").wait_for(timeout=180_000)
                _settle(page, "the Train page")
                for label, value in (("Epochs", "2"), ("Genes", "500")):
                    box = page.get_by_role("spinbutton", name=label)
                    box.fill(value, timeout=180_000)
                    box.press("Enter")
                page.get_by_text("auto trains on").wait_for()
                page.wait_for_timeout(500)
                page.get_by_role("button", name="Start training").click()
                progress = page.get_by_text(re.compile(r"Training · epoch \d+ · step [1-9]"))
                progress.wait_for(timeout=120_000)
                main = page.get_by_test_id("stMainBlockContainer")  # not the header's Stop
                main.get_by_role("button", name="Stop").click()
                page.get_by_text(re.compile(r"^Stopped\b.* · step")).wait_for(timeout=120_000)
                _settle(page, "the stopped run")  # the page redraws once the run has ended
                main.get_by_role("button", name="Resume").click()
                expect(main.get_by_role("button", name="Resume")).to_have_count(0)
                done = page.get_by_text(re.compile(r"^Finished · epoch 2 · step"))
                done.wait_for(timeout=600_000)
                assert page.locator('[data-testid="stException"]').count() == 0

                for view, heading in VIEWS:
                    page.get_by_role("link", name=view, exact=True).click()
                    page.get_by_role("heading", name=heading).first.wait_for()
                    if view in EXPLORATION:
                        page.locator(".js-plotly-plot").first.wait_for(timeout=240_000)
                    _settle(page, view)
                    assert page.locator('[data-testid="stException"]').count() == 0, view
        finally:
            browser.close()
    (run_dir,) = [r.path for r in registry.list_runs(runs_dir) if r.name != "demo"]
    status = launch.wait(run_dir, timeout=60)
    assert status.state == "finished" and status.epoch == 2 and registry.is_run(run_dir)
    assert status.device == "cpu"


VIEWS = (  # link, page heading
    ("Home", "Departures Explorer"),
    ("Data", "Data"),
    ("Train", "Train"),
    ("Perturbations", "Perturbations"),
    ("OT couplings", "OT couplings"),
    ("Trajectories", "Trajectories"),
    ("Activation", "Activation"),
)
EXPLORATION = ("Perturbations", "OT couplings", "Trajectories", "Activation")
LAST = {  # text near the end of each exploration view: its script got that far
    "Perturbations": "Metrics (CSV)",
    "OT couplings": "Plan summary",
    "Trajectories": "Download HTML",
    "Activation": "Activation per gene (CSV)",
}


def _settle(page, what: str = "") -> None:
    """Wait until the script has finished: no spinner and no 'Running' status for 1 s."""
    busy = page.locator('[data-testid="stSpinner"]')
    status = page.locator('[data-testid="stStatusWidget"]')
    quiet, end = 0, time.monotonic() + 240
    while quiet < 4:
        running = any("Running" in t for t in status.all_inner_texts())  # never waits
        quiet = 0 if running or busy.count() else quiet + 1
        if time.monotonic() > end:
            page.screenshot(path="/tmp/shots/stuck.png")
            raise AssertionError(f"{what} did not finish rendering in 4 minutes")
        page.wait_for_timeout(250)


@contextlib.contextmanager
def _explained(page, runs_dir):
    """A failure says what the page showed and what the server printed last."""
    try:
        yield
    except Exception as exc:
        try:
            shown = page.inner_text("body", timeout=5_000)[-3000:]
        except Exception:  # noqa: BLE001 - the page itself may be what failed
            shown = "(the page could not be read)"
        log = (runs_dir.parent / "streamlit.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\n--- page ---\n{shown}\n--- server ---\n{log}") from exc


def _visit(page, url: str, views) -> None:
    """Open the app at ``url`` and every view of ``views``: each renders without an exception
    box, and the exploration views draw their figures."""
    page.goto(url)
    page.get_by_text("Departures Explorer").first.wait_for()
    for view, heading in views:
        page.get_by_role("link", name=view, exact=True).click()
        page.get_by_role("heading", name=heading).first.wait_for()
        if view in EXPLORATION:  # they draw figures
            page.locator(".js-plotly-plot").first.wait_for(timeout=240_000)
            page.get_by_text(LAST[view]).first.wait_for(timeout=240_000)
        _settle(page, view)
        assert page.locator('[data-testid="stException"]').count() == 0, view


def _follow_links(page, url: str) -> None:
    """A bad link gets its message and no exception box; a deep link draws its condition and
    offers itself to copy (app/links.py)."""
    page.goto(f"{url}/activation?run=nope&perturbation=KLF1")
    page.get_by_text("which is not a run in the runs folder").wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    link = f"{url}/perturbations?run=demo&perturbation=KLF1&cell_type=k562"
    page.goto(link)
    page.locator(".js-plotly-plot").first.wait_for(timeout=240_000)
    _settle(page, "the linked view")
    title = page.locator(".js-plotly-plot .gtitle").first.text_content()
    assert title == "KLF1 in k562: predicted vs observed"
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_role("button", name="Copy link to this view").click()
    assert page.get_by_test_id("stCode").inner_text() == link
