"""Where the bundled files are: the checkout's folders, or the copies an install ships.

A checkout (or an editable install) keeps ``assets/``, ``app/`` and ``pages/`` beside the
package. A ``pip install .`` ships them inside it: ``departures_core/_assets`` and
``departures_core/_app/{app,pages,.streamlit}`` (``pyproject.toml`` maps the folders there),
so the app keeps its layout (``app/Home.py`` beside ``pages/``) in both.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_SHIPPED_ASSETS = PACKAGE / "_assets"
_SHIPPED_APP = PACKAGE / "_app"

INSTALLED = _SHIPPED_ASSETS.is_dir()
# the repository root when running from a checkout; None once installed
CHECKOUT: Path | None = None if INSTALLED else PACKAGE.parent

ASSETS = _SHIPPED_ASSETS if INSTALLED else PACKAGE.parent / "assets"
DEMO_DATA = ASSETS / "perturbench_devel_norman19_mcfaline23.h5ad"
DEMO_EMBEDDING = ASSETS / "demo_umap.npz"
DEMO_RUN = ASSETS / "demo-run"
# the folder holding app/ and pages/ (what app/Home.py puts on sys.path to import `app`)
APP_ROOT = _SHIPPED_APP if INSTALLED else PACKAGE.parent
HOME = APP_ROOT / "app" / "Home.py"
PAGES = APP_ROOT / "pages"
STREAMLIT_CONFIG = APP_ROOT / ".streamlit" / "config.toml"  # the app's settings


def work_dir() -> Path:
    """Where relative paths of the app and of background trainings resolve: the checkout's
    root, or (installed) the current working directory."""
    return CHECKOUT if CHECKOUT is not None else Path.cwd()


def runs_dir() -> Path:
    """The default runs folder: ``runs/`` in `work_dir` (`registry.default_runs_dir` lets
    ``$DEPARTURES_RUNS_DIR`` override it)."""
    return work_dir() / "runs"
