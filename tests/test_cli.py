"""The command line: ``python -m departures_core train|predict`` (cli.py)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from departures_core import cli, io, keys

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = ["FOXO4", "KLF1+MAP2K6"]


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "departures_core", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One CLI training run on the demo: ``(run_dir, completed process)``."""
    out = tmp_path_factory.mktemp("cli") / "run"
    args = "--epochs 1 --n-genes 200 --batch-size 512 --device cpu".split()
    proc = _cli("train", io.DEMO_PATH, *args, "--holdout", ",".join(HOLDOUT), "--out", out)
    return out, proc


# ---------------------------------------------------------------- train
def test_train_writes_a_run_folder(cli_run):
    out, proc = cli_run
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "model.pt", "split.json", "history.csv", "data.h5ad"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert split["holdout"] == sorted(HOLDOUT)
    assert not set(split["train"]) & set(HOLDOUT) and len(split["train"]) == 31
    with open(out / "history.csv") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert {"step", "loss_cont", "loss_disc"} <= set(reader.fieldnames)
    assert rows and [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["epoch"] for r in rows} == {"1"}
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["n_genes"] == 200 and config["train"]["epochs"] == 1
    assert config["data"]["holdout"] == sorted(HOLDOUT)
    # auto-detected keys on the demo
    assert config["data"]["control"] == "control"
    assert config["data"]["cell_type_key"] == "cell_type"
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    genes = json.loads(state["vocab"])["genes"]
    assert len(genes) == 200 and "TMSB4X" in genes  # the measured perturbed gene is kept


def test_train_reports_progress_on_stderr(cli_run):
    stderr = cli_run[1].stderr
    assert re.search(r"train.*\d+/\d+", stderr)  # tqdm progress bar
    assert "saved run to" in stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------- predict
def test_predict_writes_cells_per_cell_type(cli_run, tmp_path):
    out = tmp_path / "sub" / "X.h5ad"  # missing parent folders are created
    args = "--perturbation FOXO4 --n-cells 20 --steps 5 --device cpu".split()
    proc = _cli("predict", cli_run[0], *args, "--out", out)
    assert proc.returncode == 0, proc.stderr
    demo = io.load_demo()
    cell_types = set(demo.obs.loc[demo.obs["condition"] == "FOXO4", "cell_type"].astype(str))
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 20 * len(cell_types) and pred.n_vars == 200
    # the input's cell_type column: categorical with all of its categories, as in the input
    counts = pred.obs["cell_type"].value_counts()
    assert counts[counts > 0].to_dict() == {ct: 20 for ct in cell_types}
    assert list(pred.obs["cell_type"].cat.categories) == list(demo.obs["cell_type"].cat.categories)
    assert pred.uns["departures"]["keys"]["cell_type_key"] == "cell_type"
    assert (pred.obs["perturbation"] == "FOXO4").all()
    assert pred.obs["held_out"].astype(bool).all()
    assert np.isfinite(np.asarray(pred.X)).all() and (np.asarray(pred.X) >= 0).all()
    assert pred.uns["departures"]["steps"] == 5
    assert f"wrote {pred.n_obs} predicted cells" in proc.stderr


def test_predict_trajectory_is_saved(cli_run, tmp_path):
    out = tmp_path / "traj.h5ad"
    args = "--perturbation KLF1+MAP2K6 --n-cells 4 --steps 3 --trajectory --seed 1".split()
    proc = _cli("predict", cli_run[0], *args, "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    pred = ad.read_h5ad(out)
    assert pred.obsm[keys.TRAJECTORY_X].shape == (pred.n_obs, 4, 200)
    assert pred.obsm[keys.TRAJECTORY_D].shape == (pred.n_obs, 4, 200)


def test_resume_from_the_command_line(cli_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run[0], run_dir)
    before = pd.read_csv(run_dir / "history.csv")
    proc = _cli(
        "train", "--resume", "--epochs", 2, "--batch-size", 512, "--device", "cpu", "--out", run_dir
    )
    assert proc.returncode == 0, proc.stderr
    after = pd.read_csv(run_dir / "history.csv")
    assert len(after) == 2 * len(before)
    assert list(after["step"]) == list(range(1, len(after) + 1))
    assert sorted(after["epoch"].unique()) == [1, 2]
    np.testing.assert_allclose(after["loss_cont"][: len(before)], before["loss_cont"])
    assert json.loads((run_dir / "split.json").read_text())["holdout"] == sorted(HOLDOUT)


# ---------------------------------------------------------------- user errors
def test_error_missing_file(tmp_path):
    _assert_user_error(
        _cli("train", tmp_path / "missing.h5ad", "--out", tmp_path / "r"), "no such file"
    )


def test_error_not_an_h5ad(tmp_path):
    bad = tmp_path / "table.h5ad"
    bad.write_text("gene,count\nA,1\n")
    _assert_user_error(_cli("train", bad, "--out", tmp_path / "r"), "not an .h5ad")


def test_error_unknown_perturbation_key(tmp_path):
    _assert_user_error(
        _cli("train", "--perturbation-key", "nope", "--epochs", 1, "--out", tmp_path / "r"),
        "'nope'",
    )


def test_error_unknown_perturbation_in_predict(cli_run, tmp_path):
    _assert_user_error(
        _cli("predict", cli_run[0], "--perturbation", "NOTAGENE", "--out", tmp_path / "x.h5ad"),
        "Unknown perturbation 'NOTAGENE'",
    )
    assert not (tmp_path / "x.h5ad").exists()


def test_error_missing_run_dir(tmp_path):
    _assert_user_error(
        _cli(
            "predict", tmp_path / "norun", "--perturbation", "FOXO4", "--out", tmp_path / "x.h5ad"
        ),
        "does not exist",
    )


# ---------------------------------------------------------------- in-process checks
def _run_main(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [("--n-cells", 0), ("--n-cells", -3), ("--steps", -1), ("--steps", 0)]
)
def test_predict_rejects_bad_counts(cli_run, tmp_path, capsys, bad):
    args = "--perturbation FOXO4 --n-cells 3 --device cpu".split()
    argv = ["predict", cli_run[0], *args, *bad, "--out", tmp_path / "x.h5ad"]
    code, err = _run_main(argv, capsys)
    assert code == 2
    assert err.startswith("error:")


@pytest.mark.parametrize("bad", [("--epsilon", 0), ("--batch-size", 0)])
def test_train_rejects_bad_hyperparameters(tmp_path, capsys, bad):
    code, err = _run_main(
        ["train", "--epochs", 1, "--device", "cpu", *bad, "--out", tmp_path / "r"], capsys
    )
    assert code == 2
    assert err.startswith("error:")


def test_train_zero_epochs_is_not_a_silent_broken_run(tmp_path, capsys):
    code, _ = _run_main(
        ["train", "--epochs", 0, "--device", "cpu", "--out", tmp_path / "r"], capsys
    )
    assert code == 2 or (tmp_path / "r" / "model.pt").is_file()


def test_config_auto_detects_keys_on_demo(demo):
    args = cli._parser().parse_args(["train", "--out", "x", "--holdout", "FOXO4, KLF1"])
    config = cli._config(args, demo)
    assert config.data.control == "control"
    assert config.data.cell_type_key == "cell_type"
    assert config.data.holdout == ("FOXO4", "KLF1")  # comma list, spaces stripped
    assert config.bridge.discrete is True
    args = cli._parser().parse_args(
        ["train", "--out", "x", "--no-discrete", "--pairing", "random", "--cost", "cosine"]
    )
    config = cli._config(args, demo)
    assert config.bridge.discrete is False
    assert (config.ot.pairing, config.ot.cost) == ("random", "cosine")


def test_holdout_and_fraction_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        cli._parser().parse_args(
            ["train", "--out", "x", "--holdout", "A", "--holdout-fraction", "0.2"]
        )
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_naming_the_perturbation_key_keeps_cell_type_detection(demo):
    args = cli._parser().parse_args(["train", "--perturbation-key", "condition", "--out", "x"])
    assert cli._config(args, demo).data.cell_type_key == "cell_type"


def test_control_is_detected_in_the_named_column():
    obs = pd.DataFrame({"guide": ["ctrl"] * 6 + ["A"] * 6}, index=[f"c{i}" for i in range(12)])
    adata = ad.AnnData(np.ones((12, 3), dtype=np.float32), obs=obs)
    args = cli._parser().parse_args(["train", "--perturbation-key", "guide", "--out", "x"])
    config = cli._config(args, adata)
    assert (config.data.perturbation_key, config.data.control) == ("guide", "ctrl")
