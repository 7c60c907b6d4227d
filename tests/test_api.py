"""The Python API (api.py) and the predicted AnnData's layout (predicted.py): fit on the demo,
predict, concatenate with the observed cells, save / load."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import departures_core as dc
from departures_core import keys, paths, predicted
from departures_core.api import Model, with_options
from departures_core.config import DataConfig, RunConfig
from departures_core.errors import (
    ConfigError,
    KeyNotFoundError,
    RunError,
    UnknownPerturbationError,
)

# smaller than conftest.TINY (given as options): one epoch, 200 genes and 5 sampling steps
# keep the fit and the non-responders it fits to seconds
TINY = dict(
    hidden=64, cond_dim=32, epochs=1, batch_size=128, device="cpu", n_genes=200, bridge_steps=5
)
USER_KEYS = dict(
    perturbation_key="condition", control="control", cell_type_key="cell_type", dose_key="dose"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory, demo) -> Model:
    """The demo with its own keys, its dose column ("1", "1+1") included; a few seconds."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    return dc.fit(demo, **USER_KEYS, run_dir=run_dir, seed=0, progress_bar=False, **TINY)


@pytest.fixture(scope="module")
def picks(model) -> dict[str, str]:
    """A held-out and a training perturbation observed in K562."""
    held = sorted(set(model.held_out) & {"KLF1", "FOXO4", "MAP2K6", "KLF1+MAP2K6"})
    train = [p for p in ("CEBPE+RUNX1T1", "MAP4K5", "MIDN") if p not in model.held_out]
    return {"held-out": (held or model.held_out)[0], "training": train[0]}


def test_fit_keeps_the_keys_and_options(model, demo):
    d = model.config.data
    assert (d.perturbation_key, d.control, d.cell_type_key, d.dose_key) == tuple(USER_KEYS.values())
    assert model.config.model.hidden == 64 and model.config.bridge.steps == 5
    assert model.held_out and set(model.held_out) < set(model.perturbations)
    assert model.cell_types == sorted(demo.obs["cell_type"].astype(str).unique())
    assert len(model.var_names) == 200 and set(model.var_names) < set(demo.var_names)


@pytest.mark.parametrize("which", ["held-out", "training"])
def test_predict_writes_the_input_keys_and_values(model, picks, demo, which):
    p = picks[which]
    pred = model.predict(p, cell_type="k562", n_cells=40, seed=3)
    assert pred.shape == (40, len(model.var_names))
    assert list(pred.var_names) == model.var_names
    obs = pred.obs
    assert list(obs.columns[:3]) == ["condition", "cell_type", "dose"]  # the input's first
    assert {keys.PERTURBATION, keys.CONTROL_CELL, keys.HELD_OUT} <= set(obs.columns)
    assert (obs["condition"] == p).all() and (obs[keys.PERTURBATION] == p).all()
    assert (obs["cell_type"] == "k562").all()
    # the input's own dose text: "1" for a single, "1+1" for a pair; its categories kept
    observed_dose = demo.obs.loc[demo.obs["condition"] == p, "dose"].astype(str).unique()
    assert set(obs["dose"].astype(str)) == set(observed_dose)
    assert list(obs["condition"].cat.categories) == list(demo.obs["condition"].cat.categories)
    assert obs[keys.HELD_OUT].all() == (which == "held-out")
    starts = demo.obs.loc[obs[keys.CONTROL_CELL]]
    assert (starts["condition"] == "control").all() and (starts["cell_type"] == "k562").all()


def test_predict_keeps_var_columns_and_describes_itself(model, picks, demo):
    pred = model.predict(picks["training"], cell_type="k562", n_cells=5, seed=1, steps=7)
    pd.testing.assert_frame_equal(pred.var, demo.var.loc[model.var_names], check_names=False)
    info = pred.uns["departures"]
    assert info["run"] == str(model.path) and info["version"] == dc.__version__
    assert (info["seed"], info["steps"]) == (1, 7)
    assert info["keys"] == USER_KEYS | {"control": "control"}


def test_predicted_cells_concatenate_with_the_observed(model, picks, demo, tmp_path):
    p = picks["held-out"]
    pred = model.predict(p, n_cells=30, seed=0)
    observed = demo[demo.obs["condition"].isin([p, "control"])]
    both = ad.concat([observed[:, pred.var_names], pred])
    assert both.shape == (observed.n_obs + pred.n_obs, pred.n_vars)
    for key in ("condition", "cell_type", "dose", "perturbation"):  # the inner join keeps them
        np.testing.assert_array_equal(
            both.obs[key].astype(str).to_numpy(),
            np.r_[observed.obs[key].astype(str), pred.obs[key].astype(str)],
        )
    for key in ("condition", "cell_type", "dose"):  # the input's keys stay categorical
        assert isinstance(both.obs[key].dtype, pd.CategoricalDtype), key
    np.testing.assert_allclose(both.X[observed.n_obs :].toarray(), pred.X, rtol=1e-6)
    both.write_h5ad(tmp_path / "both.h5ad")  # and it stores as it is
    assert ad.read_h5ad(tmp_path / "both.h5ad").obs["condition"].tolist()[-1] == p


def test_save_and_load_give_the_same_cells(model, picks, tmp_path):
    p = picks["held-out"]
    saved = model.save(tmp_path / "saved")
    loaded = dc.load(saved)
    assert loaded.config == model.config and loaded.path == saved
    a = model.predict(p, cell_type="k562", n_cells=25, seed=5)
    b = loaded.predict(p, cell_type="k562", n_cells=25, seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    other = loaded.predict(p, cell_type="k562", n_cells=25, seed=6)
    assert not np.array_equal(a.X, other.X)
    with pytest.raises(RunError, match="not empty"):
        model.save(saved)
    assert model.save(saved, overwrite=True) == saved


def test_a_model_fitted_without_a_folder_moves_when_saved(model, tmp_path):
    scratch = tmp_path / "scratch"
    model.save(scratch / "run")
    temporary = Model(dc.load(scratch / "run").run, scratch=scratch)
    kept = temporary.save(tmp_path / "kept")
    assert temporary.path == kept and not scratch.exists()
    assert temporary.predict(model.perturbations[0], n_cells=2).uns["departures"]["run"] == str(
        kept
    )


def test_load_opens_the_shipped_demo_run():
    demo_model = dc.load(paths.DEMO_RUN)
    pred = demo_model.predict("KLF1", cell_type="k562", n_cells=3)
    assert (pred.obs["condition"] == "KLF1").all() and "cell_type" in pred.obs


def test_bad_input_raises_typed_errors(model, demo, tmp_path):
    with pytest.raises(KeyNotFoundError, match="nope"):
        dc.fit(demo, perturbation_key="nope", progress_bar=False)
    with pytest.raises(KeyNotFoundError, match="cell type"):
        dc.fit(demo, perturbation_key="condition", cell_type_key="nope", progress_bar=False)
    with pytest.raises(ConfigError, match="Unknown option 'epoch'"):
        dc.fit(demo, perturbation_key="condition", epoch=3, progress_bar=False)
    with pytest.raises(UnknownPerturbationError, match="NOT_A_GENE"):
        model.predict("NOT_A_GENE")
    with pytest.raises(UnknownPerturbationError, match="liver"):
        model.predict(model.perturbations[0], cell_type="liver")
    with pytest.raises(ConfigError):
        model.predict(model.perturbations[0], n_cells=0)
    with pytest.raises(RunError):
        dc.load(tmp_path / "missing")


def test_options_name_config_fields_by_section():
    cfg = with_options(
        RunConfig(),
        {"steps": 5, "bridge_steps": 7, "ot_batch_size": 64, "batch_size": 32, "holdout": "A"},
    )
    assert (cfg.train.steps, cfg.bridge.steps) == (5, 7)
    assert (cfg.ot.batch_size, cfg.train.batch_size) == (64, 32)
    assert cfg.data.holdout == ("A",)


def test_input_obs_keeps_numeric_doses_and_unseen_labels():
    cfg = DataConfig(perturbation_key="drug", cell_type_key="line", dose_key="dose_uM")
    saved = pd.DataFrame(
        {
            "drug": pd.Categorical(["ctrl", "dex", "dex"]),
            "line": pd.Categorical(["A", "A", "B"]),
            "dose_uM": [0.0, 0.5, 2.0],
        }
    )
    canonical = pd.DataFrame(
        {keys.PERTURBATION: ["dex", "new"], keys.CELL_TYPE: "A", keys.DOSE: [0.5, 0.0]}
    )
    out = predicted.input_obs(canonical, cfg, saved)
    assert list(out.columns[:3]) == ["drug", "line", "dose_uM"]
    assert out["dose_uM"].tolist() == [0.5, 0.0] and out["dose_uM"].dtype == float
    assert list(out["drug"].cat.categories) == ["ctrl", "dex", "new"]
    assert out["drug"].tolist() == ["dex", "new"]
