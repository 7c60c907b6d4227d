"""Training and sampling on the real demo data (runs.py, train.py, sample.py, model.py)."""

import csv
import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import departures_core
from departures_core import keys, runs, sample, train
from departures_core.config import BridgeConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from departures_core.errors import ConfigError, RunError, UnknownPerturbationError
from departures_core.model import encode

HISTORY_FIELDS = ["step", "epoch", "loss_cont", "loss_disc", "loss", "seconds"]


def _heldout_perturbation(run) -> str:
    """The run's held-out perturbation observed in the most cell types (ties: first by name)."""
    held = run.model.split.holdout
    n_ct = {p: len({c.cell_type for c in run.data.conditions if c.perturbation == p}) for p in held}
    return max(sorted(held), key=lambda p: n_ct[p])


def _n_cell_types(run, perturbation) -> int:
    return len({c.cell_type for c in run.data.conditions if c.perturbation == perturbation})


# ---------------------------------------------------------------- training
def test_training_lowers_both_losses(trained):
    history = pd.DataFrame(trained[1])
    assert len(history) >= 40
    first, last = history.head(10), history.tail(10)
    assert last["loss_cont"].mean() < first["loss_cont"].mean()
    assert last["loss_disc"].mean() < first["loss_disc"].mean()
    assert np.isfinite(history[["loss_cont", "loss_disc", "loss"]].to_numpy()).all()
    np.testing.assert_allclose(
        history["loss"], history["loss_cont"] + history["loss_disc"], rtol=1e-5
    )


def test_history_rows(trained, tiny_config):
    history = pd.DataFrame(trained[1])
    assert list(history["step"]) == list(range(1, len(history) + 1))
    assert sorted(history["epoch"].unique()) == [1, 2]
    per_epoch = history.groupby("epoch").size()
    assert per_epoch[1] == per_epoch[2]  # same number of steps each epoch
    assert history["seconds"].is_monotonic_increasing


def test_run_folder_files(trained, tiny_config):
    run_dir = trained[0]
    for name in (
        keys.CONFIG_FILE,
        keys.MODEL_FILE,
        keys.SPLIT_FILE,
        keys.HISTORY_FILE,
        keys.DATA_FILE,
    ):
        assert (run_dir / name).is_file(), name
    config = RunConfig.from_dict(json.loads((run_dir / keys.CONFIG_FILE).read_text()))
    assert config == tiny_config
    split = json.loads((run_dir / keys.SPLIT_FILE).read_text())
    assert set(split) >= {"train", "holdout"}
    assert len(split["holdout"]) == round(0.25 * 33)
    assert not set(split["train"]) & set(split["holdout"])
    with open(run_dir / keys.HISTORY_FILE) as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert {"step", "loss_cont", "loss_disc"} <= set(reader.fieldnames)
    assert len(rows) == len(trained[1])
    assert float(rows[-1]["loss_cont"]) == pytest.approx(trained[1][-1]["loss_cont"])
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_checkpoint_is_self_describing(trained, run, tiny_config):
    state = torch.load(trained[0] / keys.MODEL_FILE, map_location="cpu", weights_only=True)
    assert {"config", "vocab", "split", "library_version", "model"} <= set(state)
    assert state["library_version"] == departures_core.__version__
    assert RunConfig.from_dict(json.loads(state["config"])) == tiny_config
    vocab = json.loads(state["vocab"])
    assert vocab["genes"] == list(run.data.genes) and len(vocab["genes"]) == 500
    assert vocab["cell_types"] == ["A172", "T98G", "U87MG", "k562"]
    split = json.loads(state["split"])
    assert split == json.loads((trained[0] / keys.SPLIT_FILE).read_text())
    assert state["epoch"] == 2 and state["step"] == len(trained[1])
    assert run.epoch == 2


def test_heldout_perturbations_contribute_no_token(run):
    """A held-out single gene never seen in a training label has no learned embedding."""
    train_parts = {t for p in run.model.split.train for t in p.split("+")}
    for p in run.model.split.holdout:
        for part in p.split("+"):
            assert (part in run.model.vocab.tokens) == (part in train_parts)


# ---------------------------------------------------------------- prediction
def test_predict_heldout_perturbation(run):
    p = _heldout_perturbation(run)
    pred = runs.predict(run, p, n_cells=50, steps=10)
    n_ct = _n_cell_types(run, p)
    assert pred.shape == (50 * n_ct, 500)
    assert list(pred.var_names) == list(run.model.vocab.genes)
    assert (pred.obs["perturbation"] == p).all() and pred.obs["held_out"].all()
    assert pred.obs["cell_type"].value_counts().eq(50).all()
    x = np.asarray(pred.X)
    assert np.isfinite(x).all() and (x >= 0).all()
    active = pred.layers["activation"]
    assert set(np.unique(active)) <= {0, 1}
    assert (x[active == 0] == 0).all()
    np.testing.assert_allclose(x, np.maximum(pred.layers["x1_hat"], 0) * active)
    assert x.std(0).max() > 0  # not a constant output
    assert pred.uns["departures"]["steps"] == 10
    # control cells are drawn from the matching cell type
    names = pd.Index(run.data.cell_names)
    idx = names.get_indexer(pred.obs["control_cell"])
    assert (idx >= 0).all()
    assert (run.data.cell_type[idx] == pred.obs["cell_type"].to_numpy()).all()
    assert (run.data.perturbation[idx] == "control").all()


def test_predict_trajectory(run):
    p = _heldout_perturbation(run)
    steps = 10
    pred = runs.predict(run, p, n_cells=20, steps=steps, trajectory=True)
    n = pred.n_obs
    traj = pred.obsm["X_trajectory"]
    assert traj.shape == (n, steps + 1, 500)
    idx = pd.Index(run.data.cell_names).get_indexer(pred.obs["control_cell"])
    np.testing.assert_array_equal(traj[:, 0], run.data.x[idx])  # starts at the control cells
    np.testing.assert_allclose(traj[:, -1], pred.layers["x1_hat"])  # ends at the endpoint
    d_traj = pred.obsm["D_trajectory"]
    assert d_traj.shape == (n, steps + 1, 500)
    np.testing.assert_array_equal(d_traj[:, 0], (run.data.x[idx] > 0).astype(np.uint8))
    np.testing.assert_array_equal(d_traj[:, -1], pred.layers["activation"])
    np.testing.assert_allclose(pred.uns["trajectory_t"], np.linspace(0, 1, steps + 1))


def test_genes_off_at_the_endpoint_follow_the_training_bridge_to_zero(run):
    """The expression bridge runs given the on/off endpoint d1, so a gene that ends off is
    carried to 0 along the whole path - the mean of the Brownian bridge it was trained on,
    (1 - t) x0 - and not only from the moment it switches."""
    p = _heldout_perturbation(run)
    ct = run.data.cell_types[0]
    start = run.data.control_indices(ct)
    steps = 10
    rows = [(p, ct, 0.0)] * len(start)
    sim = runs.simulate_from(run, start, rows, steps=steps, trajectory=True, responders=False)
    x0 = run.data.x[start]
    ends_off = (sim.d1_hat == 0) & (x0 > 0)  # on in the control cell, off at the endpoint
    assert ends_off.sum() > 100
    for k in (2, 5, 8):
        t = k / steps
        mean_k = sim.x_path[k][ends_off].mean()
        assert mean_k == pytest.approx((1 - t) * x0[ends_off].mean(), abs=0.05)


def test_same_seed_same_samples_after_reload(trained):
    run_a, run_b = runs.open_run(trained[0]), runs.open_run(trained[0])
    p = _heldout_perturbation(run_a)
    a = runs.predict(run_a, p, n_cells=30, steps=5, seed=3)
    b = runs.predict(run_b, p, n_cells=30, steps=5, seed=3)
    again = runs.predict(run_a, p, n_cells=30, steps=5, seed=3)
    other = runs.predict(run_a, p, n_cells=30, steps=5, seed=4)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(again.X))
    assert list(a.obs["control_cell"]) == list(b.obs["control_cell"])
    assert not np.array_equal(np.asarray(a.X), np.asarray(other.X))


def test_predict_all_control_cells_and_one_cell_type(run):
    p = _heldout_perturbation(run)
    pred = runs.predict(run, p, cell_type="k562", steps=3)
    assert pred.n_obs == 100 and (pred.obs["cell_type"] == "k562").all()
    assert sorted(pred.obs["control_cell"]) == sorted(
        run.data.cell_names[run.data.control_indices("k562")]
    )


def test_predict_unseen_combination_of_training_genes(run):
    trained = set(run.model.split.train) - set(run.model.split.validation)
    singles = sorted(p for p in trained if "+" not in p)
    combo = f"{singles[0]}+{singles[1]}"
    assert run.data.find(combo, "k562") is None
    pred = runs.predict(run, combo, n_cells=10, steps=3)
    assert pred.n_obs == 10 * 4  # never observed: predicted in every cell type
    assert pred.obs["held_out"].all()
    assert list(pred.uns["departures"]["unknown_parts"]) == []


def test_predict_errors(run):
    with pytest.raises(UnknownPerturbationError, match="Unknown perturbation 'NOTAGENE'"):
        runs.predict(run, "NOTAGENE", n_cells=5, steps=2)
    with pytest.raises(UnknownPerturbationError, match="Unknown cell type"):
        runs.predict(run, run.model.split.train[0], cell_type="HeLa", n_cells=5, steps=2)


def test_open_run_errors(tmp_path, trained):
    with pytest.raises(RunError, match="does not exist"):
        runs.open_run(tmp_path / "nope")
    with pytest.raises(RunError, match="not a trained run folder"):
        runs.open_run(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(trained[0], broken)
    (broken / keys.MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="corrupt"):
        runs.open_run(broken)
    no_data = tmp_path / "no_data"
    shutil.copytree(trained[0], no_data)
    (no_data / keys.DATA_FILE).unlink()
    with pytest.raises(RunError, match="incomplete"):
        runs.open_run(no_data)


# ---------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo, tiny_config):
    """Train 1 epoch, then resume to 2 (new learning rate); big batches keep it quick."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    one = tiny_config.replace(train=TrainConfig(epochs=1, batch_size=512, device="cpu"))
    first = runs.train(demo, one, run_dir, progress_bar=False)
    two = tiny_config.replace(train=TrainConfig(epochs=2, batch_size=512, lr=5e-4, device="cpu"))
    second = runs.train(None, two, run_dir, resume=True, progress_bar=False)
    return run_dir, first, second


def test_resume_continues_history(resumed):
    run_dir, first, second = resumed
    assert [r["epoch"] for r in first] == [1] * len(first)
    assert len(second) == 2 * len(first)
    # the first epoch's rows are read back from history.csv unchanged
    for before, after in zip(first, second[: len(first)], strict=True):
        assert (after["step"], after["epoch"]) == (before["step"], before["epoch"])
        assert after["loss_cont"] == pytest.approx(before["loss_cont"])
        assert after["loss_disc"] == pytest.approx(before["loss_disc"])
    steps = [r["step"] for r in second]
    assert steps == list(range(1, len(second) + 1))  # strictly increasing, no restart
    assert {r["epoch"] for r in second[len(first) :]} == {2}
    with open(run_dir / keys.HISTORY_FILE) as fh:
        saved = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in saved] == steps
    run = runs.open_run(run_dir)
    assert run.epoch == 2
    assert json.loads((run_dir / keys.CONFIG_FILE).read_text())["train"]["epochs"] == 2


def test_resume_uses_the_new_learning_rate(resumed):
    run_dir = resumed[0]
    assert json.loads((run_dir / keys.CONFIG_FILE).read_text())["train"]["lr"] == 5e-4
    state = torch.load(run_dir / keys.MODEL_FILE, map_location="cpu", weights_only=True)
    # the rate decays (cosine) from the new base rate towards a tenth of it at the last step
    last = train.learning_rate(5e-4, state["step"] - 1, state["step"])
    assert 5e-5 < last < 6e-5
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(last)


def test_learning_rate_decays_from_the_base_rate_to_a_tenth():
    rates = [train.learning_rate(1e-3, s, 100) for s in range(0, 101, 10)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert train.learning_rate(1e-3, 150, 100) == pytest.approx(1e-4)  # past the end: the floor


# ---------------------------------------------------------------- continuous bridge only
def test_no_discrete_trains_and_predicts_without_activation(tmp_path, demo, tiny_config):
    config = tiny_config.replace(
        bridge=BridgeConfig(discrete=False),
        train=TrainConfig(epochs=1, batch_size=512, device="cpu"),
    )
    history = runs.train(demo, config, tmp_path / "run", progress_bar=False)
    assert all(r["loss_disc"] == 0.0 for r in history)
    assert np.isfinite([r["loss_cont"] for r in history]).all()
    run = runs.open_run(tmp_path / "run")
    assert run.model.net.disc is None
    assert run.config.bridge.discrete is False
    p = run.model.split.holdout[0]
    pred = runs.predict(run, p, n_cells=10, steps=4)
    assert "activation" not in pred.layers
    x = np.asarray(pred.X)
    assert np.isfinite(x).all() and (x >= 0).all()
    np.testing.assert_allclose(x, np.maximum(pred.layers["x1_hat"], 0))


def test_auto_epochs_give_the_default_steps_and_explicit_epochs_win():
    from departures_core.config import MAX_AUTO_EPOCHS, resolved_epochs

    assert resolved_epochs(TrainConfig(), 71) == 57  # the demo: 57 x 71 >= 4,000 steps
    assert resolved_epochs(TrainConfig(steps=100), 30) == 4
    assert resolved_epochs(TrainConfig(), 1) == MAX_AUTO_EPOCHS
    assert resolved_epochs(TrainConfig(epochs=2), 71) == 2


# ---------------------------------------------------------------- on/off bridge
def test_on_off_state_of_the_endpoint_is_reproduced(tmp_path):
    """Genes on in 30 % of control cells and 70 % of perturbed ones, independently: the
    sampled endpoint has them on in about 70 % of cells, with either on/off sampler. Drawing
    each gene at its switch time from p(d1 | d_t) alone (a network that does not see which
    genes have switched) gave 63 % here."""
    rng = np.random.default_rng(0)
    n, g = 600, 24
    on = np.concatenate([rng.random((n, g)) < 0.3, rng.random((n, g)) < 0.7])
    counts = (on * (1 + rng.poisson(4.0, on.shape))).astype(np.float32)
    labels = ["control"] * n + ["UP"] * n
    adata = ad.AnnData(
        counts, obs=pd.DataFrame({"condition": labels}, index=map(str, range(2 * n)))
    )
    adata.var_names = [f"g{i}" for i in range(g)]
    config = RunConfig(
        model=ModelConfig(hidden=64, cond_dim=32),
        train=TrainConfig(steps=600, batch_size=128, device="cpu", validation=0.0),
        data=DataConfig(holdout_fraction=0.0),
    )
    runs.train(adata, config, tmp_path / "run", progress_bar=False)
    run = runs.open_run(tmp_path / "run")
    cond = run.data.find("UP", run.data.conditions[0].cell_type)
    x0 = run.data.x[cond.control]
    assert (x0 > 0).mean() == pytest.approx(0.3, abs=0.03)
    cond_rows = encode(run.model.vocab, [(cond.perturbation, cond.cell_type, cond.dose)] * len(x0))
    for onoff in ("endpoint", "sequential"):
        sim = sample.simulate(run.model.net, x0, cond_rows, steps=50, onoff=onoff, trajectory=True)
        assert sim.d1_hat.mean() == pytest.approx(0.7, abs=0.04), onoff
        assert (sim.prediction > 0).mean() == pytest.approx(0.7, abs=0.04), onoff
        # the path: control state at t = 0, the endpoint at t = 1, each gene switching once
        # at a uniform time, so a share t of the genes is in its endpoint state at time t
        path = sim.d_path
        np.testing.assert_array_equal(path[0], (x0 > 0).astype(np.uint8))
        np.testing.assert_array_equal(path[-1], sim.d1_hat.astype(np.uint8))
        differs = path[0] != path[-1]
        for k in (10, 25, 40):
            at_end = (path[k] == path[-1])[differs].mean()
            assert at_end == pytest.approx(k / 50, abs=0.05), (onoff, k)


def _with_unseen_cell_type(demo, tiny_config, ct_dropout: float):
    """A model (untrained: the behaviour is the encoder's) that holds one cell type out."""
    import dataclasses

    from departures_core.data import populations
    from departures_core.model import Departures

    cell_types = sorted(demo.obs["cell_type"].unique())
    config = tiny_config.replace(
        data=dataclasses.replace(tiny_config.data, holdout_cell_types=(cell_types[0],)),
        model=ModelConfig(hidden=32, cond_dim=16, ct_dropout=ct_dropout),
    ).check()
    data = populations(runs.prepare(demo.copy(), config), config.data, seed=config.seed)
    assert data.cell_types == cell_types
    model = Departures.build(data, config)
    model.net.eval()
    rows = [("control", ct, 0.0) for ct in cell_types]
    return model, cell_types, encode(model.vocab, rows)


@pytest.mark.parametrize("ct_dropout", [0.0, 0.2])
def test_an_unseen_cell_type_takes_the_trained_fallback(demo, tiny_config, ct_dropout):
    model, cell_types, cond = _with_unseen_cell_type(demo, tiny_config, ct_dropout)
    from departures_core.model import Departures

    reloaded = Departures.from_state(model.state())  # the split says which, not the weights
    assert reloaded.net.encoder.ct_unseen.tolist() == [True] + [False] * (len(cell_types) - 1)
    encoder = model.net.encoder
    before = encoder(cond)
    with torch.no_grad():  # another control profile for every cell type
        encoder.ct_context.mul_(2.0).add_(0.5)
    after = encoder(cond)
    moved = (after - before).abs().amax(dim=1)
    assert moved[1:].min() > 1e-4  # a trained cell type is read from its controls
    if ct_dropout > 0:  # the held-out one takes the fallback dropout trained
        assert moved[0] == 0
    else:  # as before the setting existed: its controls' profile is all it has
        assert moved[0] > 1e-4


def test_cell_type_dropout_is_trained_and_checked(demo, tiny_config):
    model, _, cond = _with_unseen_cell_type(demo, tiny_config, 0.5)
    encoder = model.net.encoder
    encoder.token_dropout = 0.0  # only the cell type's part may change here
    seen = cond[[1] * 400]
    with torch.no_grad():
        full = encoder.eval()(seen)
        torch.manual_seed(0)
        out = encoder.train()(seen)
    # about half the rows lose their cell type's part, the others keep it
    kept = (out - full).abs().amax(1) < 1e-6
    assert 0.35 < float(kept.float().mean()) < 0.65
    assert len(torch.unique(out[~kept], dim=0)) == 1  # one fallback for all

    with pytest.raises(ConfigError, match="ct_dropout"):
        RunConfig(model=ModelConfig(ct_dropout=1.0)).check()


# ---------------------------------------------------------------- moving average of the weights
def test_the_moving_average_of_the_weights_spans_at_most_a_third_of_the_training():
    assert train.ema_decay(0.999, 4000) == 0.999  # the default training: as configured
    assert train.ema_decay(0.999, 300) == pytest.approx(0.99)  # a short one: 1 - 3 / 300
    assert train.ema_decay(0.999, 2) == 0.0  # two steps: the last weights
    with pytest.raises(ConfigError, match="ema"):
        RunConfig(train=TrainConfig(ema=1.0)).check()


def test_a_run_trained_with_a_moving_average_keeps_the_averaged_weights(
    tmp_path, demo, tiny_config
):
    """The same training (seed, pairs, steps) with and without the average: the averaged
    run saves weights that trail its last ones - closer to them than the first epoch's
    weights are, yet not equal - and its history (the raw weights' losses) is the same."""
    one = TrainConfig(epochs=1, batch_size=512, device="cpu")
    two = TrainConfig(epochs=2, batch_size=512, device="cpu")
    averaged = TrainConfig(epochs=2, batch_size=512, device="cpu", ema=0.5)
    for name, cfg in (("one", one), ("last", two), ("avg", averaged)):
        runs.train(demo, tiny_config.replace(train=cfg), tmp_path / name, progress_bar=False)

    def weights(name):
        state = torch.load(tmp_path / name / keys.MODEL_FILE, map_location="cpu", weights_only=True)
        return torch.cat([v.flatten().float() for v in state["model"].values()])

    w_one, w_last, w_avg = weights("one"), weights("last"), weights("avg")
    assert not torch.allclose(w_avg, w_last)
    assert (w_avg - w_last).norm() < 0.5 * (w_one - w_last).norm()
    losses = [pd.read_csv(tmp_path / n / keys.HISTORY_FILE)["loss"] for n in ("last", "avg")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert runs.open_run(tmp_path / "avg").epoch == 2
