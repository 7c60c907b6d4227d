"""A restart finds the first server process's work on disk: a fresh process renders every
exploration view of the demo run from the disk cache — no sample drawn, no UMAP fitted, umap
never imported — and draws the same figures (what keeps its first renders under 3 s)."""

import json
import os
import subprocess
import sys

from app_helpers import HOME, ROOT

VIEWS = ("perturbations", "couplings", "trajectories", "activation")
KINDS = ("cells", "map", "placed", "scores", "frame", "minibatch")

# A fresh process: Home installs the demo run into the empty runs folder and opens it
SCRIPT = """
import hashlib, json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({home!r}, default_timeout=600).run()
from departures_core import cache
views = {{}}
for page in {views!r}:
    at.switch_page(f"../pages/{{page}}.py").run()
    views[page] = {{
        "errors": [str(e.value) for e in at.exception],
        "charts": [hashlib.sha1(c.proto.spec.encode()).hexdigest() for c in at.get("plotly_chart")],
    }}
print(json.dumps({{"stats": dict(cache.stats), "umap": "umap" in sys.modules, "views": views}}))
"""


def _fresh_process(runs_dir) -> dict:
    env = {**os.environ, "DEPARTURES_RUNS_DIR": str(runs_dir)}
    env.pop("NUMBA_CACHE_DIR", None)  # the app keeps numba's cache under the runs folder
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(home=str(HOME), views=VIEWS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for page, view in result["views"].items():
        assert not view["errors"] and view["charts"], (page, view)
    return result


def test_a_second_server_process_renders_every_view_from_the_disk_cache(tmp_path):
    runs_dir = tmp_path / "runs"
    first = _fresh_process(runs_dir)
    assert first["stats"]["miss"] > 0 and first["stats"]["write"] == first["stats"]["miss"]
    assert any((runs_dir / ".cache" / "numba").rglob("*.nbi"))  # numba's cache, beside it
    entries = {p: p.stat().st_mtime_ns for p in (runs_dir / ".cache" / "runs").rglob("*.npz")}

    second = _fresh_process(runs_dir)
    stats = second["stats"]
    assert stats.get("miss", 0) == 0 and stats.get("error", 0) == 0, stats
    assert all(stats.get(f"hit:{kind}", 0) > 0 for kind in KINDS), stats
    assert not second["umap"]  # nothing was fitted, and nothing compiled in the background
    assert second["views"] == first["views"]  # the same figures, drawn from the cache
    now = {p: p.stat().st_mtime_ns for p in (runs_dir / ".cache" / "runs").rglob("*.npz")}
    assert now.keys() == entries.keys()  # nothing new was written...
    assert all(now[p] > entries[p] for p in now)  # ...and every entry was read (touched)
