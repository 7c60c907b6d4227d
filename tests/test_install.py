"""``pip install .`` into a fresh virtual environment: the ``departures`` command, the installed
package and its bundled files (demo data, demo run, the app), used from another folder; and
pyproject.toml's dependencies in line with requirements.txt."""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import departures_core

ROOT = Path(__file__).resolve().parent.parent
# what a build does not need; it writes build/ and *.egg-info into its source, so it gets a copy
NOT_BUILT = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "tests", "bench", "out",
)  # fmt: skip


def _run(args, cwd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEPARTURES_RUNS_DIR")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A venv with the project installed, non-editable, offline; it sees this environment's
    packages (torch & co.) through a .pth file, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("install")
    src = shutil.copytree(ROOT, tmp / "src", ignore=NOT_BUILT)
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp)
    Path(purelib.stdout.strip(), "_project_env.pth").write_text("\n".join(site.getsitepackages()))
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip, src], cwd=tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"env": env_dir, "python": python, "bin": env_dir / "bin", "cwd": elsewhere}


def test_departures_command_runs_from_another_folder(installed):
    help_ = _run([installed["bin"] / "departures", "--help"], installed["cwd"]).stdout
    assert help_.startswith("usage: departures") and "app" in help_ and "predict" in help_
    version = _run([installed["bin"] / "departures", "--version"], installed["cwd"]).stdout
    assert version.strip() == f"departures {departures_core.__version__}"
    module = _run([installed["python"], "-m", "departures_core", "--version"], installed["cwd"])
    assert module.stdout == version


FIND_FILES = """
import json, sys
import departures_core
from departures_core import demo, embedding, io, paths, registry
sys.path.insert(0, str(paths.APP_ROOT))  # what app/Home.py does to import `app`
from app import state
files = [io.DEMO_PATH, embedding.DEMO_EMBEDDING, demo.DEMO_RUN / "model.pt", paths.HOME,
         state.PAGES_DIR / "home.py", paths.STREAMLIT_CONFIG,
         paths.ASSETS / "knowledge" / "human_go.tsv.gz"]
print(json.dumps({
    "package": departures_core.__file__, "installed": paths.INSTALLED,
    "missing": [str(f) for f in files if not f.is_file()],
    "runs": str(registry.default_runs_dir()), "app": state.__file__,
}))
"""


def test_the_installed_package_finds_its_bundled_files(installed):
    out = json.loads(_run([installed["python"], "-c", FIND_FILES], installed["cwd"]).stdout)
    assert Path(out["package"]).is_relative_to(installed["env"])  # not the checkout
    assert Path(out["app"]).is_relative_to(installed["env"])
    assert out["installed"] and out["missing"] == []
    assert out["runs"] == str(installed["cwd"].resolve() / "runs")  # the working directory's


def test_installed_dependencies_are_satisfied(installed):
    proc = subprocess.run(
        [installed["python"], "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert "departures" not in proc.stdout.lower(), proc.stdout


def test_pyproject_dependencies_follow_requirements():
    """Each pin of requirements.txt is declared in pyproject.toml: the lower bound of a
    dependency (the tested set installs, newer releases may), or in an extra (``test``,
    ``cell-eval``), which may pin it exactly."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = str(next(iter(req.specifier)).version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {r.name.lower(): r for r in map(Requirement, project["dependencies"])}
    extras = {
        r.name.lower(): r
        for reqs in project["optional-dependencies"].values()
        for r in map(Requirement, reqs)
    }
    assert set(required) | set(extras) == set(pins)
    assert set(required).isdisjoint(extras)
    assert {"pytest", "hypothesis"} <= set(extras)
    for name, pin in pins.items():
        spec = (required.get(name) or extras[name]).specifier
        assert spec.contains(pin), f"{name} {spec} excludes the pinned {pin}"
        if name in required:
            assert f">={pin}" in {str(s) for s in spec}, f"{name}: lower bound is not {pin}"
    torch = required["torch"].specifier
    assert any(s.operator == "<" for s in torch), "an open torch range pulls a CUDA build"


def test_every_subpackage_is_packaged():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "departures_core").rglob("__init__.py")
    }
    assert found <= set(packages)
    assert re.fullmatch(r"\d+\.\d+\.\d+", departures_core.__version__)
    assert sys.version_info >= (3, 11)
