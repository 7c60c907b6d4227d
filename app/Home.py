"""Departures Explorer — entry point: ``streamlit run app/Home.py`` (from the repository root).

Routes to the views in the top-level ``pages/`` folder and draws the shared sidebar.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from departures_core import cache, registry  # noqa: E402  (neither imports numba)

# before anything imports numba (umap-learn does): its compiled kernels persist across
# server processes under the runs folder
cache.use_numba_cache(registry.default_runs_dir() / ".cache" / "numba")

from app import run_state, sidebar, state  # noqa: E402

PAGES_DIR = state.PAGES_DIR
# file, title, icon; views other files add later appear after these, titled by file name
KNOWN = [
    ("home.py", "Home", ":material/home:"),
    ("data.py", "Data", ":material/dataset:"),
    ("train.py", "Train", ":material/model_training:"),
    ("perturbations.py", "Perturbations", ":material/science:"),
    ("couplings.py", "OT couplings", ":material/grid_on:"),
    ("trajectories.py", "Trajectories", ":material/timeline:"),
    ("activation.py", "Activation", ":material/toggle_on:"),
    ("evaluation.py", "Evaluation", ":material/leaderboard:"),
]


def _pages() -> list:
    known = {f for f, _, _ in KNOWN}
    extra = sorted(
        p.name for p in PAGES_DIR.glob("*.py") if p.name not in known and not p.name.startswith("_")
    )
    entries = [*KNOWN, *((f, f[:-3].replace("_", " ").capitalize(), None) for f in extra)]
    return [
        st.Page(PAGES_DIR / f, title=title, icon=icon, default=f == "home.py")
        for f, title, icon in entries
        if (PAGES_DIR / f).exists()
    ]


st.set_page_config(page_title="Departures Explorer", page_icon="🧬", layout="wide")
page = st.navigation(_pages())
state.init()
state.warm_up(umap=not run_state.maps_on_disk())
sidebar.render()
page.run()
