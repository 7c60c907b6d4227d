"""Fixtures for the app tests: an AppTest factory and a runs folder per test."""

from pathlib import Path

import pytest
from app_helpers import HOME
from streamlit.testing.v1 import AppTest


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """An empty runs folder the app uses (through DEPARTURES_RUNS_DIR)."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("DEPARTURES_RUNS_DIR", str(path))
    return path


@pytest.fixture
def app(runs_dir):
    """A factory of fresh AppTest sessions of the whole app, already run once."""

    def make() -> AppTest:
        at = AppTest.from_file(str(HOME), default_timeout=60)
        return at.run()

    return make
