"""The OT couplings view (couplings.py): minibatch, coupling, display order, stats, figures."""

import numpy as np
import pytest

from departures_core import couplings, ot
from departures_core.errors import ConfigError, DataValidationError, UnknownPerturbationError


def _permuted(n=30, g=8, seed=0):
    """x1 is x0 shuffled plus tiny noise: perturbed cell j is control cell perm[j]."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, g))
    perm = rng.permutation(n)
    return x0, x0[perm] + rng.normal(scale=1e-3, size=(n, g)), perm


def _coupled(run, epsilon=0.05, cost="euclidean", batch_size=64, seed=0):
    cond = run.data.conditions[0]
    return cond, couplings.condition_coupling(
        run, cond.perturbation, cond.cell_type, epsilon=epsilon, cost=cost,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip


# ---------------------------------------------------------------- minibatch and coupling
def test_minibatch_rows_are_a_seeded_capped_subset():
    control, perturbed = np.arange(100, 200), np.arange(500, 540)
    r0, r1 = couplings.minibatch_rows(control, perturbed, batch_size=32, seed=3)
    assert len(r0) == 32 and len(r1) == 32
    assert set(r0) <= set(control) and set(r1) <= set(perturbed)
    assert len(set(r0)) == 32 and (np.diff(r0) > 0).all()  # no repeats, sorted
    again = couplings.minibatch_rows(control, perturbed, batch_size=32, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((r0, r1), again, strict=True))
    other, _ = couplings.minibatch_rows(control, perturbed, batch_size=32, seed=4)
    assert not np.array_equal(r0, other)
    r0, r1 = couplings.minibatch_rows(control, perturbed, batch_size=64, seed=3)
    assert len(r0) == 64 and np.array_equal(r1, perturbed)  # fewer than the batch: all
    with pytest.raises(ConfigError, match="batch size"):
        couplings.minibatch_rows(control, perturbed, batch_size=1, seed=0)


def test_small_epsilon_recovers_the_permutation_on_the_diagonal():
    x0, x1, perm = _permuted()
    mb = couplings.couple(x0, x1, epsilon=0.005)
    assert (mb.ot.plan.argmax(0) == perm).all()
    ordered = mb.ot.plan[np.ix_(mb.row_order, mb.col_order)]
    # a permutation, ordered by barycentre, is the identity: every column's mass on its row
    np.testing.assert_array_equal(ordered.argmax(0), np.arange(len(perm)))
    assert sorted(mb.row_order) == list(range(30)) and sorted(mb.col_order) == list(range(30))


def test_random_plan_is_one_epoch_of_uniform_draws():
    x0, x1, _ = _permuted(n=20)
    mb = couplings.couple(x0[:12], x1, epsilon=0.1, seed=7)
    n0, n1 = mb.shape
    assert (n0, n1) == (12, 20)
    counts = mb.random_plan * n1
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-12)  # whole pairs
    assert counts.sum() == pytest.approx(n1)
    again = couplings.couple(x0[:12], x1, epsilon=0.1, seed=7)
    np.testing.assert_array_equal(mb.random_plan, again.random_plan)
    assert mb.weights("random") is mb.random_plan and mb.weights("ot") is mb.ot.plan


def test_couple_rejects_bad_arguments():
    x0, x1, _ = _permuted(n=10)
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="ε"):
            couplings.couple(x0, x1, epsilon=eps)
    with pytest.raises(ConfigError, match="cost must be one of"):
        couplings.couple(x0, x1, epsilon=0.1, cost="manhattan")
    with pytest.raises(DataValidationError, match="NaN"):
        couplings.couple(np.where(x0 > 1, np.nan, x0), x1, epsilon=0.1)
    with pytest.raises(DataValidationError, match="at least 2"):
        couplings.couple(x0[:1], x1, epsilon=0.1)
    with pytest.raises(DataValidationError, match="same genes"):
        couplings.couple(x0, x1[:, :3], epsilon=0.1)
    with pytest.raises(ConfigError, match="pairing"):
        couplings.couple(x0, x1, epsilon=0.1).weights("greedy")
    # every pair costs ~1 (normalised): exp(-1 / 1e-4) underflows to 0
    far0, far1 = np.array([[0.0], [0.01]]), np.array([[10.0], [10.01]])
    with pytest.raises(ConfigError, match="too small"):
        couplings.couple(far0, far1, epsilon=1e-4)


# ---------------------------------------------------------------- on real demo cells
def test_ot_beats_random_and_entropy_falls_with_epsilon(run):
    entropies = []
    for eps in (1.0, 0.1, 0.01):
        _, mb = _coupled(run, epsilon=eps)
        stats = couplings.plan_stats(mb)
        s_ot, s_rand = stats.loc["ot"], stats.loc["random"]
        n0, n1 = mb.shape
        assert s_ot.uniform_entropy == pytest.approx(np.log(n0 * n1))
        assert s_ot.entropy <= s_ot.uniform_entropy + 1e-9
        assert 0 < s_ot.entropy_ratio <= 1 and s_rand.entropy_ratio == 1.0
        assert s_ot.mean_cost < s_rand.mean_cost
        assert s_rand.mean_cost == pytest.approx(mb.ot.cost.mean())
        assert s_ot.converged and s_ot.marginal_error < 1e-4
        entropies.append(s_ot.entropy)
    assert entropies[0] > entropies[1] > entropies[2]


def test_condition_coupling_uses_the_conditions_cells(run):
    cond, mb = _coupled(run, batch_size=16, cost="cosine")
    assert mb.shape == (16, 16) and mb.ot.cost_kind == "cosine"
    assert set(mb.control_rows) <= set(cond.control)
    assert set(mb.perturbed_rows) <= set(cond.perturbed)
    x = run.data.x
    expected = ot.cost_matrix(x[mb.control_rows], x[mb.perturbed_rows], cost="cosine")
    np.testing.assert_allclose(mb.ot.cost, expected)
    pairs = couplings.pairs_table(
        mb, "ot", control_names=run.data.cell_names, perturbed_names=run.data.cell_names
    )
    assert len(pairs) == 16 * 16 and (np.diff(pairs["weight"]) <= 0).all()
    assert pairs["weight"].sum() == pytest.approx(1.0)
    assert set(pairs["control"]) <= set(run.data.cell_names[cond.control])
    with pytest.raises(UnknownPerturbationError, match="not observed"):
        couplings.condition_coupling(run, "NOT-A-GENE", cond.cell_type, epsilon=0.1)


# ---------------------------------------------------------------- figures
def test_plan_heatmap_draws_the_ordered_plan():
    x0, x1, _ = _permuted(n=12)
    mb = couplings.couple(x0[:9], x1, epsilon=0.05)
    fig = couplings.plan_heatmap(mb.ot.plan, mb.row_order, mb.col_order, title="plan")
    assert [t.type for t in fig.data] == ["heatmap"]
    z = np.asarray(fig.data[0].z, float)
    assert z.shape == (9, 12) and np.isfinite(z).all()
    expected = mb.ot.plan[np.ix_(mb.row_order, mb.col_order)] * 9 * 12
    np.testing.assert_allclose(z, expected, rtol=1e-5)
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == pytest.approx(np.quantile(z.max(0), 0.95))
    fixed = couplings.plan_heatmap(mb.ot.plan, mb.row_order, mb.col_order, title="p", zmax=50)
    assert fixed.data[0].zmax == 50
    assert "PC 1" in fig.layout.yaxis.title.text and "perturbed" in fig.layout.xaxis.title.text
    assert fig.layout.yaxis.autorange == "reversed"  # matrix convention: first row on top
    assert fig.layout.title.text == "plan"
    with pytest.raises(ConfigError, match="permutation"):
        couplings.plan_heatmap(mb.ot.plan, mb.row_order[::2], mb.col_order, title="x")
    with pytest.raises(ConfigError, match="finite"):
        couplings.plan_heatmap(np.full((3, 3), np.nan), np.arange(3), np.arange(3), title="x")
    with pytest.raises(ConfigError, match="2-D"):
        couplings.plan_heatmap(np.ones(3), np.arange(3), np.arange(3), title="x")


def test_pair_lines_draws_heaviest_pairs_first():
    rng = np.random.default_rng(0)
    weights = rng.random((6, 8)) ** 4
    weights /= weights.sum()
    xy0, xy1, bg = rng.normal(size=(6, 2)), rng.normal(size=(8, 2)), rng.normal(size=(50, 2))
    fig = couplings.pair_lines(xy0, xy1, weights, title="t", max_lines=10, background=bg)
    names = [t.name for t in fig.data]
    assert names == ["other cells", "pairs (10 heaviest)", "control (6)", "perturbed (8)"]
    lines = fig.data[1]
    xs, ys = np.asarray(lines.x, float), np.asarray(lines.y, float)
    assert (
        len(xs) == 30 and np.isnan(xs[2::3]).all() and np.isfinite(np.delete(xs, np.s_[2::3])).all()
    )
    drawn = np.asarray(lines.customdata, float)[::3] / (6 * 8)
    np.testing.assert_allclose(drawn, np.sort(weights.ravel())[::-1][:10])  # heaviest first
    i, j = np.unravel_index(np.argmax(weights), weights.shape)
    assert (xs[0], ys[0], xs[1], ys[1]) == pytest.approx((*xy0[i], *xy1[j]))  # control → perturbed
    assert len(fig.data[2].x) == 6 and len(fig.data[3].x) == 8
    assert fig.layout.xaxis.title.text == "UMAP 1" and fig.layout.yaxis.title.text == "UMAP 2"
    assert "10 of 48 pairs" in fig.layout.title.text
    default = couplings.pair_lines(xy0, xy1, weights, title="t")
    assert default.data[0].name == "pairs (8 heaviest)"  # one per cell of the larger side
    with pytest.raises(ConfigError, match="do not match"):
        couplings.pair_lines(xy1, xy0, weights, title="t")
    with pytest.raises(ConfigError, match="max_lines"):
        couplings.pair_lines(xy0, xy1, weights, title="t", max_lines=0)
