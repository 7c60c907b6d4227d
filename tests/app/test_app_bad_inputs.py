"""The corpus of bad and edge-valid inputs (tests/corpus.py) uploaded on the Data page: a bad
file shows its message in ``st.error`` (never a traceback), a valid one is ready to train, and
the session keeps working afterwards.

One browser session uploads every file in turn (as a user trying file after file would, and
cheaper than a session per file); the last tests check that it still works.
"""

import numpy as np
import pytest
from app_helpers import HOME, goto, texts
from corpus import BAD, BY_NAME, VALID  # tests/corpus.py: tests/ is on sys.path (conftest)
from streamlit.testing.v1 import AppTest

from departures_core import embedding


def _fake_umap(adata, **kwargs):  # a real fit costs ~60 s of numba compilation per process
    names = np.asarray(adata.obs_names).astype(str)
    return embedding.Embedding(names, np.zeros((adata.n_obs, 2), dtype=np.float32))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One app session on the Data page, shared by the tests of this module, in order."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEPARTURES_RUNS_DIR", str(runs_dir))
        mp.setattr(embedding, "compute_umap", _fake_umap)
        yield goto(AppTest.from_file(str(HOME), default_timeout=60).run(), "data")


def _no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


def _upload(at, case):
    uploader = at.file_uploader(key="upload")
    uploader.upload(f"{case.name}.h5ad", case.data(), "application/octet-stream").run()
    _no_exception(at)
    return at


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_bad_upload_shows_its_message(session, case):
    at = _upload(session, case)
    assert case.shown[1] in texts(at.error)
    # never "ready" with the bad file: a file that cannot be opened leaves the session on
    # the dataset it had (the demo, at first), one that opens is shown with its problem
    shown = f"{case.name}.h5ad" in texts(at.subheader).replace("\\", "")
    assert not (shown and "Ready to train" in texts(at.success))


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_upload_is_ready_to_train(session, case):
    at = _upload(session, case)
    assert not at.error, texts(at.error)
    assert "Ready to train" in texts(at.success)
    assert f"{case.name}.h5ad" in texts(at.subheader).replace("\\", "")  # shown escaped


def test_one_cell_perturbation_is_dropped_with_the_box(session):
    at = _upload(session, BY_NAME["one_cell_perturbation"])
    assert "G4 (1)" in texts(at.error)
    next(c for c in at.checkbox if c.label.startswith("Drop perturbations")).check().run()
    assert not at.error, texts(at.error)
    assert "1 rare perturbation(s) will be dropped" in texts(at.success)


def test_guessed_columns_are_not_called_ready(session):
    """No control value was detected: the page says so and that the columns are a guess
    (here the guess, 'ctl-guide', would train) until the user picks them."""
    at = _upload(session, BY_NAME["no_control_cells"])
    assert "Could not find a control value" in texts(at.error)
    assert "guess" in texts(at.warning) and not at.success
    next(s for s in at.selectbox if s.label == "Control value").set_value("G2").run()
    assert not at.error and "Ready to train" in texts(at.success)


@pytest.mark.parametrize(
    "case", [BY_NAME["not_hdf5"], BY_NAME["no_obs_columns"]], ids=lambda c: c.name
)
def test_the_session_keeps_working_after_bad_uploads(session, case):
    at = _upload(session, case)
    _no_exception(goto(at, "train"))  # other pages render with the bad dataset selected
    at = goto(at, "home")
    next(b for b in at.button if b.label == "Load the demo dataset").click().run()
    _no_exception(at)
    at = goto(at, "data")
    assert not at.error, texts(at.error)  # the upload's error is not left behind
    assert "Ready to train" in texts(at.success)
    assert "Demo" in texts(at.subheader)
