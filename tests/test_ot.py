"""Entropic OT pairing (ot.py) and per-epoch pairing of the training conditions (train.py)."""

import math

import numpy as np
import pytest

from departures_core import ot, train
from departures_core.config import OTConfig
from departures_core.data import populations


def _clouds(n0=30, n1=40, g=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n0, g)), rng.normal(loc=0.5, size=(n1, g))


def _permuted(n=40, g=10, seed=0):
    """x1 is x0 in a shuffled order plus tiny noise: x1[j] pairs with x0[perm[j]]."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, g))
    perm = rng.permutation(n)
    return x0, x0[perm] + rng.normal(scale=1e-3, size=(n, g)), perm


# ---------------------------------------------------------------- cost
def test_cost_matrix_euclidean_values_and_max_one():
    x0 = np.array([[0.0, 0.0], [1.0, 0.0]])
    x1 = np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    c = ot.cost_matrix(x0, x1)
    squared = np.array([[0.0, 4.0, 9.0], [1.0, 5.0, 4.0]])
    assert c.shape == (2, 3)
    assert c.max() == 1.0
    np.testing.assert_allclose(c, squared / 9.0, atol=1e-12)
    assert c.min() >= 0.0


def test_cost_matrix_cosine():
    x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    x1 = np.array([[5.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])  # scale must not matter
    c = ot.cost_matrix(x0, x1, cost="cosine")
    # 1 - cos: [[0, 1, 2], [1, 0, 1]], normalised by the max 2
    np.testing.assert_allclose(c, [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5]], atol=1e-12)
    rng = np.random.default_rng(1)
    a, b = rng.random((7, 4)), rng.random((9, 4))
    assert ot.cost_matrix(a, b, cost="cosine").max() == pytest.approx(1.0)


def test_cost_matrix_rejects_unknown_cost_and_solve_rejects_bad_epsilon():
    x0, x1 = _clouds()
    with pytest.raises(ValueError, match="cost must be one of"):
        ot.cost_matrix(x0, x1, cost="manhattan")
    with pytest.raises(ValueError, match="epsilon"):
        ot.solve(x0, x1, epsilon=0.0)


# ---------------------------------------------------------------- the plan
def test_plan_has_uniform_marginals_and_converges():
    x0, x1 = _clouds(30, 40)
    c = ot.solve(x0, x1, epsilon=0.1)
    assert c.plan.shape == (30, 40) and c.cost.shape == (30, 40)
    np.testing.assert_allclose(c.plan.sum(1), np.full(30, 1 / 30), atol=1e-6)
    np.testing.assert_allclose(c.plan.sum(0), np.full(40, 1 / 40), atol=1e-6)
    assert c.plan.sum() == pytest.approx(1.0, abs=1e-6)
    assert c.marginal_error < 1e-5
    assert c.converged
    assert c.n_iter < 1000
    assert (c.epsilon, c.cost_kind) == (0.1, "euclidean")
    assert c.cost.max() == pytest.approx(1.0)


@pytest.mark.parametrize("cost", ["euclidean", "cosine"])
def test_small_epsilon_puts_mass_on_the_obvious_matching(cost):
    x0, x1, perm = _permuted()
    c = ot.solve(x0, x1, epsilon=0.01, cost=cost)
    on_true_pairs = c.plan[perm, np.arange(len(perm))].sum()
    assert on_true_pairs > 0.95
    assert c.converged
    # a large epsilon spreads mass out instead
    blurred = ot.solve(x0, x1, epsilon=10.0, cost=cost)
    assert blurred.plan[perm, np.arange(len(perm))].sum() < 0.5
    assert blurred.entropy > c.entropy


def test_entropy_of_a_near_independent_plan_is_log_n0_n1():
    x0, x1 = _clouds(10, 12)
    c = ot.solve(x0, x1, epsilon=1e3)
    assert c.entropy == pytest.approx(math.log(10 * 12), abs=1e-3)


def test_solve_reports_non_convergence():
    x0, x1 = _clouds(30, 40)
    c = ot.solve(x0, x1, epsilon=0.001, max_iter=5, stop_thr=1e-12)
    assert c.marginal_error > 1e-3  # far from the marginals: certainly not converged
    assert not c.converged


# ---------------------------------------------------------------- drawing pairs
def test_sample_pairs_frequencies_follow_the_plan():
    plan = np.array([[0.10, 0.20, 0.00], [0.30, 0.15, 0.25]])
    coupling = ot.Coupling(plan, np.zeros_like(plan), 0.0, True, 1, 0.1, "euclidean")
    n = 200_000
    i, j = ot.sample_pairs(coupling, n, np.random.default_rng(0))
    assert i.shape == j.shape == (n,)
    counts = np.zeros_like(plan)
    np.add.at(counts, (i, j), 1)
    freq = counts / n
    tol = 5 * np.sqrt(plan * (1 - plan) / n) + 1e-12
    assert np.all(np.abs(freq - plan) <= tol)
    assert counts[0, 2] == 0  # zero mass is never drawn


def test_pair_condition_returns_one_valid_pair_per_perturbed_cell():
    x0, x1 = _clouds(30, 45)
    i, j = ot.pair_condition(x0, x1, np.random.default_rng(0), epsilon=0.1)
    assert len(i) == len(j) == 45
    assert i.min() >= 0 and i.max() < 30
    assert j.min() >= 0 and j.max() < 45
    assert np.issubdtype(i.dtype, np.integer) and np.issubdtype(j.dtype, np.integer)


def test_pair_condition_follows_the_obvious_matching():
    x0, x1, perm = _permuted(n=30)
    i, j = ot.pair_condition(x0, x1, np.random.default_rng(0), epsilon=0.01)
    assert np.mean(i == perm[j]) > 0.9


def test_pair_condition_minibatches_bound_the_plan(monkeypatch):
    shapes = []
    real_solve = ot.solve

    def recording_solve(a, b, **kw):
        shapes.append((len(a), len(b)))
        return real_solve(a, b, **kw)

    monkeypatch.setattr(ot, "solve", recording_solve)
    x0, x1 = _clouds(n0=40, n1=50)
    i, j = ot.pair_condition(x0, x1, np.random.default_rng(1), batch_size=16)
    assert len(i) == len(j) == 50
    assert i.max() < 40 and j.max() < 50 and i.min() >= 0 and j.min() >= 0
    assert shapes == [(16, 16), (16, 16), (16, 16), (16, 2)]  # 50 = 3 * 16 + 2
    # fewer controls than the batch: all of them are used
    shapes.clear()
    ot.pair_condition(x0[:5], x1, np.random.default_rng(1), batch_size=16)
    assert all(n0 == 5 for n0, _ in shapes) and sum(n1 for _, n1 in shapes) == 50


def test_random_pairing():
    x0, x1 = _clouds(20, 500)
    i, j = ot.pair_condition(x0, x1, np.random.default_rng(0), pairing="random")
    assert len(i) == len(j) == 500
    assert i.min() >= 0 and i.max() < 20 and j.min() >= 0 and j.max() < 500
    assert len(np.unique(i)) == 20  # uniform over controls: all 20 drawn among 500
    with pytest.raises(ValueError, match="pairing"):
        ot.pair_condition(x0, x1, np.random.default_rng(0), pairing="greedy")


def test_pair_condition_is_seeded():
    x0, x1 = _clouds()
    a = ot.pair_condition(x0, x1, np.random.default_rng(5))
    b = ot.pair_condition(x0, x1, np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


# ---------------------------------------------------------------- pairing on the demo
@pytest.fixture(scope="module")
def demo_data(demo, tiny_config):
    return populations(demo, tiny_config.data, seed=0)


@pytest.mark.parametrize("pairing", ["ot", "random"])
def test_epoch_pairs_never_mix_conditions(demo_data, tiny_config, pairing):
    data = demo_data
    config = tiny_config.replace(ot=OTConfig(pairing=pairing, batch_size=128))
    i0, i1, ci = train.epoch_pairs(data, config, np.random.default_rng(0))
    conditions = data.train_conditions()
    assert len(i0) == len(i1) == len(ci) == sum(len(c.perturbed) for c in conditions)
    assert set(np.unique(ci)) == set(range(len(conditions)))
    assert np.all(data.perturbation[i0] == data.control)  # control cells only
    assert np.all(data.cell_type[i0] == data.cell_type[i1])  # cell types never mix
    cond_pert = np.array([conditions[k].perturbation for k in ci])
    cond_ct = np.array([conditions[k].cell_type for k in ci])
    assert np.all(data.perturbation[i1] == cond_pert)
    assert np.all(data.cell_type[i1] == cond_ct)
    held = set(data.split.holdout)
    assert not held & set(data.perturbation[i1])  # held-out perturbations are never paired


def test_cost_scaled_by_its_mean_makes_epsilon_relative_to_the_typical_cost():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(30, 8)), rng.normal(size=(40, 8)) + 1.0
    by_mean = ot.cost_matrix(x0, x1, scale="mean")
    assert by_mean.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(by_mean / by_mean.max(), ot.cost_matrix(x0, x1), rtol=1e-9)
    with pytest.raises(ValueError, match="scale"):
        ot.cost_matrix(x0, x1, scale="median")
    # log-domain Sinkhorn stays a proper plan where the plain one underflows
    sharp = ot.solve(x0, x1, epsilon=1e-3, scale="mean", log_domain=True)
    assert np.isfinite(sharp.plan).all() and sharp.plan.sum() == pytest.approx(1.0)


def test_pca_features_keep_the_cells_and_their_main_axes():
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(1, 50))
    x = rng.normal(size=(300, 1)) * 5 @ axis + rng.normal(size=(300, 50))
    z = ot.pca_features(x.astype(np.float32), n_pcs=5, seed=0)
    assert z.shape == (300, 5) and z.dtype == np.float32
    assert abs(np.corrcoef(z[:, 0], x @ axis.ravel())[0, 1]) > 0.95
