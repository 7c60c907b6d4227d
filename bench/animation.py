"""How long a frame change of the trajectory animation takes in a browser: SVG ``scatter``
against WebGL ``scattergl``, inside ``st.plotly_chart``.

    python bench/animation.py [--points 1000 3000 5000] [--frames 26] [--repeats 2]

A small Streamlit script draws `trajectories.animation` of a synthetic scene (``--points``
moving cells, 300 still target and start cells, colour by time) in headless Chromium
(Playwright, /usr/bin/chromium, no GPU: WebGL runs on SwiftShader). "Play" runs every frame
as fast as the browser can (frame duration 10 ms); the time between two
``plotly_animatingframe`` events is what one frame change costs, script and paint. Prints
one table of medians (over all frame changes of all repeats) and their ratio.
"""

from __future__ import annotations

import argparse
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
from app_speed import ARGS, CHROMIUM  # noqa: E402  (same folder; one browser setup)

KINDS = ("scatter", "scattergl")

SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
import streamlit as st
from departures_core import trajectories as tr

q = st.query_params
n, frames = int(q.get("n", 1000)), int(q.get("frames", 26))
rng = np.random.default_rng(0)
start = rng.normal(size=(n, 2))
end = start + rng.normal(size=(n, 2)) + [4.0, 0.0]
t = np.linspace(0, 1, frames, dtype=np.float32)[:, None, None]
noise = 0.3 * np.sqrt(t * (1 - t)) * rng.normal(size=(frames, n, 2))
coords = ((1 - t) * start + t * end + noise).astype(np.float32)
sc = tr.Scene(t.ravel(), coords, np.repeat(t[:, :, 0], n, 1), "time", "t",
              target=end[:300].astype(np.float32), start=start[:300].astype(np.float32))
st.plotly_chart(tr.animation(sc, webgl=q.get("kind") == "scattergl", frame_ms=10))
"""

HOOK = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  window.__times = []; window.__done = false;
  gd.on('plotly_animatingframe', () => window.__times.push(performance.now()));
  gd.on('plotly_animated', () => { window.__done = true; });
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(script: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless=true"]
    cmd += [f"--server.port={port}", "--server.address=127.0.0.1"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited") from None
            time.sleep(0.1)


def frame_changes(page, url: str, n: int, kind: str, frames: int) -> list[float]:
    """Milliseconds between successive frames of one play-through."""
    page.goto(f"{url}/?n={n}&kind={kind}&frames={frames}")
    page.locator(".js-plotly-plot .updatemenu-button").first.wait_for()
    trace = ".scatterlayer .trace" if kind == "scatter" else ".gl-canvas-context"
    page.locator(f".js-plotly-plot {trace}").first.wait_for(state="attached")
    page.wait_for_timeout(500)  # let the first draw settle
    page.evaluate(HOOK)
    page.locator(".js-plotly-plot .updatemenu-button").first.click()
    page.wait_for_function("window.__done === true", timeout=300_000)
    times = page.evaluate("window.__times")
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1000, 3000, 5000])
    parser.add_argument("--frames", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    medians: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "anim.py"
        script.write_text(SCRIPT.format(root=str(ROOT)))
        proc, url = start_server(script)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(120_000)
                for n in args.points:
                    for kind in KINDS:
                        gaps = []
                        for _ in range(args.repeats):
                            gaps += frame_changes(page, url, n, kind, args.frames)
                        medians[n, kind] = statistics.median(gaps)
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"median frame change in st.plotly_chart, ms ({args.frames} frames, {args.repeats}x)")
    print(f"{'points':>8} {'scatter (SVG)':>14} {'scattergl (WebGL)':>18} {'SVG / WebGL':>12}")
    print("-" * 56)
    for n in args.points:
        svg, gl = medians[n, "scatter"], medians[n, "scattergl"]
        print(f"{n:>8,} {svg:>14.0f} {gl:>18.0f} {svg / gl:>12.1f}")


if __name__ == "__main__":
    main()
