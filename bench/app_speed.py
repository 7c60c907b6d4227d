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
* each exploration view (Perturbations, OT couplings, Trajectories, Activation) on a
  trained demo run, AppTest in a fresh process, then in a second fresh process on the same
  runs folder (a restart, a talk day): the warm-up Home starts in the background, then
  each view's first render and its cached re-render (what a user waits for when coming
  back or changing a display option). The first process computes samples, UMAP fits and
  placements and leaves them in the disk cache (`departures_core.cache`) and numba's
  cache; the second should find them there. A third fresh process opens the views without
  waiting for the warm-up (a user clicking at once). ``--run DIR`` uses a trained run; by
  default the shipped demo run (what a fresh app opens). ``--views-only``: just these.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
import json, os, sys, threading, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({home!r}, default_timeout=600).run()
from app import state
from departures_core import cache
for thread in threading.enumerate():  # what Home starts in the background: imports, and the
    if {join} and thread.name.startswith(state.WARM_UP):  # UMAP compile when no map is cached
        thread.join()
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
out["cache"] = dict(cache.stats)
out["umap imported"] = "umap" in sys.modules
print(json.dumps(out))
"""
VIEW_NAMES = {
    "perturbations": "Perturbations",
    "couplings": "OT couplings",
    "trajectories": "Trajectories",
    "activation": "Activation",
}
SHIPPED_RUN = ROOT / "assets" / "demo-run"


def _views_once(run_dir: str, runs_dir: str, *, join: bool = True) -> dict:
    code = VIEWS_APPTEST.format(home=str(HOME), run=run_dir, join=join)
    env = {**os.environ, "DEPARTURES_RUNS_DIR": runs_dir}
    env.pop("NUMBA_CACHE_DIR", None)  # the app keeps it under the runs folder
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def view_times(run_dir: str) -> tuple[dict[str, tuple[float, float]], dict]:
    """Each view's (first, cached) render in a fresh process on an empty runs folder holding a
    copy of ``run_dir``, then in a second fresh process on the same folder, then in a third
    that does not wait for Home's background warm-up (a user clicking at once); keyed
    ``(process, view)``. Also the disk cache's counts of each process."""
    with tempfile.TemporaryDirectory() as runs_dir:
        copy = Path(runs_dir) / Path(run_dir).name
        shutil.copytree(run_dir, copy)
        rows, info = {}, {}
        for process in (1, 2, 3):
            t = _views_once(str(copy), runs_dir, join=process < 3)
            rows[process, "warm-up"] = (t["warm-up"], float("nan"))
            for page in VIEW_NAMES:
                rows[process, page] = tuple(t[page])
            info[process] = {"cache": t["cache"], "umap imported": t["umap imported"]}
    return rows, info


def print_view_table(rows: dict[tuple, list], info: dict, run: str, repeats: int) -> None:
    def med(process, page, i=0):
        return statistics.median(v[i] for v in rows[process, page])

    print(f"\nviews on {run}: fresh process, then fresh process again (median of {repeats})")
    head = f"{'view':<22} {'1st: first':>10} {'cached':>7} {'2nd: first':>10} {'cached':>7}"
    print(head + f" {'2nd/1st':>8} {'2nd at once':>12}")
    print("-" * (len(head) + 22))
    for page, name in {"warm-up": "warm-up (background)", **VIEW_NAMES}.items():
        one, two = med(1, page), med(2, page)
        again1 = again2 = at_once = ""
        if page != "warm-up":
            cells = ((1, 1), (2, 1), (3, 0))  # (process, 0: first render / 1: cached)
            again1, again2, at_once = (f"{med(p, page, i):.2f}" for p, i in cells)
        print(
            f"{name:<22} {one:10.2f} {again1:>7} {two:10.2f} {again2:>7} "
            f"{two / one:8.2f} {at_once:>12}"
        )
    for process in (1, 2, 3):
        c = info[process]["cache"]
        print(
            f"process {process}: disk cache {c.get('hit', 0)} hits, {c.get('miss', 0)} misses, "
            f"{c.get('write', 0)} writes, {c.get('error', 0)} errors; umap imported: "
            f"{info[process]['umap imported']}"
        )
    print(
        "warm-up: Home's background work, waited for (imports; in the 1st process also the "
        "UMAP compile). 2nd at once: a 3rd process that does not wait for it."
    )


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
    parser.add_argument("--views-only", action="store_true", help="only the view timings")
    args = parser.parse_args()
    browser = not args.no_browser and have_browser()
    rows: dict[str, list[float]] = {}
    views: dict[tuple, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(0 if args.views_only else args.repeats):
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
        run_dir = args.run or str(SHIPPED_RUN)
        for _ in range(args.repeats):
            measured, info = view_times(run_dir)
            for k, v in measured.items():
                views.setdefault(k, []).append(v)
    if rows:
        print(f"{'what (fresh processes; median of ' + str(args.repeats) + ')':<52} {'s':>7}")
        print("-" * 60)
        for name, values in rows.items():
            print(f"{name:<52} {statistics.median(values):7.2f}")
        if not browser:
            print("(browser rows skipped: needs playwright and /usr/bin/chromium)")
    print_view_table(views, info, run_dir, args.repeats)


if __name__ == "__main__":
    main()
