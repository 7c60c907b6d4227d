"""The real thing in a real browser: `streamlit run app/Home.py`, load the demo, start
training, watch its progress, stop it. Headless Chromium from Debian (/usr/bin/chromium)
driven by Playwright; skipped when either is missing unless DEPARTURES_REQUIRE_BROWSER=1."""

import os
import re
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
        from playwright.sync_api import sync_playwright
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


@pytest.fixture
def server(tmp_path):
    """``(url, runs_dir)`` of a fresh Streamlit server; stopped (with its process group)
    after the test."""
    port, runs_dir = _free_port(), tmp_path / "runs"
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
    log = open(tmp_path / "streamlit.log", "wb")
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
                    raise AssertionError((tmp_path / "streamlit.log").read_text()) from None
                time.sleep(0.3)
        yield url, runs_dir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def test_load_demo_train_and_watch_progress(server):
    sync_playwright = _require_browser()
    url, runs_dir = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("button", name="Load the demo dataset").click()
            page.locator(".js-plotly-plot").first.wait_for()  # the demo's UMAP
            page.get_by_text("Ready to train").wait_for()
            page.get_by_role("link", name="Train").click()
            for label, value in (("Epochs", "3"), ("Genes", "500")):
                box = page.get_by_role("spinbutton", name=label)
                box.fill(value)
                box.press("Enter")
            page.get_by_text("auto trains on").wait_for()
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Start training").click()
            progress = page.get_by_text(re.compile(r"Training · epoch \d+ · step [1-9]"))
            progress.wait_for(timeout=120_000)
            page.get_by_role("button", name="Stop").click()
            ended = page.get_by_text(re.compile(r"^(Stopped|Finished)\b.* · step"))
            ended.wait_for(timeout=120_000)
        finally:
            browser.close()
    (run_dir,) = [r.path for r in registry.list_runs(runs_dir)]
    status = launch.wait(run_dir, timeout=60)
    assert status.state in ("stopped", "finished") and registry.is_run(run_dir)
    assert status.step >= 1 and status.device == "cpu"
