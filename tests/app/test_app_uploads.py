"""Bad uploads get a message that says what is wrong and how to fix it: tested through the
functions the Data page calls (stage, read, detect keys, check) and through the page."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from app_helpers import goto, texts

from departures_core import io, launch
from departures_core.errors import (
    DataValidationError,
    InputFileError,
    KeyNotFoundError,
    NoControlCellsError,
)

KEYS = io.ObsKeys("condition", "control", "cell_type")


def _toy(**obs_overrides) -> ad.AnnData:
    labels = ["control"] * 6 + ["A"] * 5 + ["B"] * 5
    x = np.log1p(np.random.default_rng(0).poisson(2, size=(len(labels), 6))).astype(np.float32)
    obs = pd.DataFrame(
        {"condition": labels, "cell_type": ["t1"] * len(labels)},
        index=[f"c{i}" for i in range(len(labels))],
    )
    for k, v in obs_overrides.items():
        obs[k] = v
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))


def _bytes(adata: ad.AnnData, tmp_path) -> bytes:
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


def test_not_hdf5_bytes(tmp_path):
    path = launch.stage_upload(b"cell,gene\n1,2\n", "table.h5ad", tmp_path / "uploads")
    with pytest.raises(InputFileError, match="not an .h5ad file .*write_h5ad"):
        io.read(path)


def test_staging_is_by_content_and_names_are_safe(tmp_path):
    a = launch.stage_upload(b"same bytes", "../../evil name.h5ad", tmp_path / "up")
    b = launch.stage_upload(b"same bytes", "evil name.h5ad", tmp_path / "up")
    assert a == b and a.name == "evil-name.h5ad"
    assert a.resolve().is_relative_to((tmp_path / "up").resolve())


def test_missing_key(tmp_path):
    adata = _toy()
    del adata.obs["condition"]
    with pytest.raises(KeyNotFoundError, match="Columns present: cell_type"):
        io.detect_keys(adata)
    with pytest.raises(KeyNotFoundError, match="no column 'condition'.*Columns present"):
        launch.check_dataset(adata, KEYS)


def test_no_control_cells():
    adata = _toy(condition=["ctl"] * 6 + ["A"] * 5 + ["B"] * 5)
    with pytest.raises(NoControlCellsError, match="Choose the value that marks"):
        launch.check_dataset(adata, KEYS)


def test_nan_values():
    adata = _toy()
    adata.X[0, 0] = np.nan
    with pytest.raises(DataValidationError, match="NaN.*nan_to_num"):
        launch.check_dataset(adata, KEYS)


def test_non_numeric_dose_and_rare_perturbations():
    adata = _toy(dose=["high"] * 16)
    with pytest.raises(DataValidationError, match="not a number"):
        launch.check_dataset(adata, io.ObsKeys("condition", "control", "cell_type", "dose"))
    rare = _toy(condition=["control"] * 6 + ["A"] * 8 + ["B"] * 2)
    with pytest.raises(DataValidationError, match="fewer than 3 cells"):
        launch.check_dataset(rare, KEYS)
    assert launch.check_dataset(rare, KEYS, drop_rare=True) == {"B": 2}


def _upload(at, name, data):
    at.file_uploader(key="upload").upload(name, data, "application/octet-stream").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_shows_upload_errors_not_tracebacks(app, tmp_path, runs_dir):
    at = goto(app(), "data")
    _upload(at, "junk.h5ad", b"\x00not an hdf5 file at all")
    assert "not an .h5ad file" in texts(at.error)
    nan = _toy()
    nan.X[1, 2] = np.nan
    _upload(at, "nan.h5ad", _bytes(nan, tmp_path))
    assert "NaN" in texts(at.error)
    # opened (its name shown escaped), so the user can see and fix the keys
    assert "nan.h5ad" in texts(at.subheader).replace("\\", "")
    assert list((runs_dir / "uploads").glob("*/nan.h5ad"))


def test_page_lets_user_map_keys_when_detection_fails(app, tmp_path):
    adata = _toy()
    adata.obs = adata.obs.rename(columns={"condition": "sgRNA_target"})[
        ["cell_type", "sgRNA_target"]
    ]
    at = _upload(goto(app(), "data"), "odd.h5ad", _bytes(adata, tmp_path))
    assert "Columns present: cell_type, sgRNA_target" in texts(at.error)  # why detection failed
    pert = next(s for s in at.selectbox if s.label == "Perturbation column")
    pert.set_value("sgRNA_target").run()
    next(s for s in at.selectbox if s.label == "Control value").set_value("control").run()
    assert "Ready to train" in texts(at.success)
    assert not at.error, texts(at.error)
