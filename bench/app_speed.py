"""How fast the app feels: from starting it to the demo's UMAP on screen, and to training.

    python bench/app_speed.py [--repeats 3] [--no-browser]

Prints one table of medians over repeats, each measured in fresh processes (a fresh
Streamlit server pays every import again, as a user's first visit does):

* server start -> ``/_stcore/health`` answers
* AppTest, fresh process: first render of Home; "Load the demo dataset" -> Data page with
  its UMAP (script time only)
* headless Chromium (Playwright, /usr/bin/chromium): open the app -> Home drawn; click
  "Load the demo dataset" -> UMAP drawn; both together are what a user waits for
* training launched in the background -> first step reported in progress.json
* each exploration view (Perturbations, OT couplings, Trajectories, Activation) with a
  trained demo run, AppTest in a fresh process: the UMAP warm-up started by Home, then
  each view's first render (samples, UMAP fit and placement computed) and its cached
  re-render (what a user waits for when coming back or changing a display option).
  ``--run DIR`` uses a trained run; otherwise the demo is trained with the defaults first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HOME = ROOT / "app" / "Home.py"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

APPTEST = """
import json, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({home!r}, default_timeout=120).run()
t1 = time.perf_counter()
next(b for b in at.button if b.label == "Load the demo dataset").click().run()
t2 = time.perf_counter()
assert not at.exception and at.get("plotly_chart"), "no UMAP on the Data page"
print(json.dumps({{"home": t1 - t0, "data": t2 - t1}}))
"""


VIEWS_APPTEST = """
import json, os, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({home!r}, default_timeout=600).run()
from app import state
state.warm_up().join()  # the UMAP compile Home starts in the background
out = {{"warm-up": time.perf_counter() - t0}}
at.sidebar.selectbox[0].set_value({run!r}).run()
for page in ("perturbations", "couplings", "trajectories", "activation"):
    t = time.perf_counter()
    at.switch_page(f"../pages/{{page}}.py").run()
    first = time.perf_counter() - t
    assert not at.exception, [e.value for e in at.exception]
    t = time.perf_counter()
    at.run()
    out[page] = (first, time.perf_counter() - t)
print(json.dumps(out))
"""
VIEW_NAMES = {
    "perturbations": "Perturbations",
    "couplings": "OT couplings",
    "trajectories": "Trajectories",
    "activation": "Activation",
}


def view_times(run_dir: str) -> dict[str, float]:
    code = VIEWS_APPTEST.format(home=str(HOME), run=run_dir)
    env = {**os.environ, "DEPARTURES_RUNS_DIR": str(Path(run_dir).parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    t = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {"views: UMAP warm-up (numba compile, background)": t["warm-up"]}
    for page, name in VIEW_NAMES.items():
        first, cached = t[page]
        rows[f"views: {name}, first render"] = first
        rows[f"views: {name}, cached render"] = cached
    return rows


def train_demo(runs_dir: str) -> str:
    """The demo trained with the default settings (what a user gets from the Train page)."""
    from departures_core import io, runs
    from departures_core.config import DataConfig, RunConfig

    run_dir = Path(runs_dir) / "demo-bench"
    config = RunConfig(data=DataConfig(cell_type_key="cell_type"))
    runs.train(io.load_demo(), config, run_dir, progress_bar=False)
    return str(run_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs_dir: str) -> tuple[subprocess.Popen, str, float]:
    """A fresh `streamlit run app/Home.py`, its URL and the seconds until it was healthy."""
    port = _free_port()
    env = {**os.environ, "DEPARTURES_RUNS_DIR": runs_dir}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(HOME),
        "--server.headless=true",
        f"--server.port={port}",
        "--server.address=127.0.0.1",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited") from None
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def browser_times(url: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        t0 = time.perf_counter()
        page.goto(url)
        button = page.get_by_role("button", name="Load the demo dataset")
        button.wait_for()
        t1 = time.perf_counter()
        button.click()
        page.locator(".js-plotly-plot .main-svg").first.wait_for()
        t2 = time.perf_counter()
        browser.close()
    return {
        "browser: open app -> Home drawn": t1 - t0,
        "browser: click demo -> UMAP drawn": t2 - t1,
        "browser: open app -> demo UMAP drawn": t2 - t0,
    }


def apptest_times() -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", APPTEST.format(home=str(HOME))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    t = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "AppTest (fresh process): first render of Home": t["home"],
        "AppTest: demo button -> Data page with UMAP": t["data"],
    }


def first_step(runs_dir: str) -> float:
    """Seconds from launching a demo run to its first reported training step."""
    from departures_core import io, launch, registry

    config = launch.make_config(
        io.DEMO_KEYS, holdout=["FOXO4"], n_genes=500, epochs=1, device="cpu"
    )
    start = time.perf_counter()
    run_dir = launch.launch(runs_dir, f"bench-{time.time_ns()}", config, io.DEMO_PATH)
    while (st := registry.status(run_dir)).step < 1:
        if not st.active:
            raise RuntimeError(st.error)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    launch.stop(run_dir)
    launch.wait(run_dir, timeout=120)
    return seconds


def have_browser() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--run", help="a trained demo run for the view timings")
    args = parser.parse_args()
    browser = not args.no_browser and have_browser()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            proc, url, seconds = start_server(tmp)
            rows.setdefault("server start -> health", []).append(seconds)
            try:
                if browser:
                    for k, v in browser_times(url).items():
                        rows.setdefault(k, []).append(v)
            finally:
                stop_server(proc)
            for k, v in apptest_times().items():
                rows.setdefault(k, []).append(v)
            rows.setdefault("training launched -> first step", []).append(first_step(tmp))
        run_dir = args.run or train_demo(tmp)
        for _ in range(args.repeats):
            for k, v in view_times(run_dir).items():
                rows.setdefault(k, []).append(v)
    print(f"{'what (fresh processes; median of ' + str(args.repeats) + ')':<52} {'s':>7}")
    print("-" * 60)
    for name, values in rows.items():
        print(f"{name:<52} {statistics.median(values):7.2f}")
    if not browser:
        print("(browser rows skipped: needs playwright and /usr/bin/chromium)")


if __name__ == "__main__":
    main()
