"""Helpers shared by the app tests."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "app" / "Home.py"
PAGES = ("home", "data", "train")


def goto(at: AppTest, page: str) -> AppTest:
    """Switch to ``pages/<page>.py`` and run it."""
    return at.switch_page(f"../pages/{page}.py").run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def plotly_specs(at: AppTest) -> list[str]:
    return [c.proto.spec for c in at.get("plotly_chart")]


def values(array) -> list:
    """A plotly JSON array, plain or typed (``{"dtype": ..., "bdata": ...}``), as a list."""
    if isinstance(array, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def without_run(at: AppTest, *, data: bool = True) -> AppTest:
    """The session with no run chosen (and, ``data=False``, no dataset): a new session opens
    on the demo dataset and the latest finished run, the shipped demo run at first."""
    at.session_state["run"] = None
    if not data:
        at.session_state["dataset"] = None
        at.session_state["obs_keys"] = None
    return at.run()


def with_run(app, run_dir: Path, runs_dir: Path, name: str = "tiny") -> AppTest:
    """A fresh session with a copy of the trained run ``run_dir`` selected."""
    import shutil

    if not (runs_dir / name).exists():
        shutil.copytree(run_dir, runs_dir / name)
    at = app()
    at.sidebar.selectbox[0].set_value(str(runs_dir / name)).run()
    return at
