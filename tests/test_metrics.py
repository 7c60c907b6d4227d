"""Tests for departures_core.metrics: hand-computed values, invariants, errors."""

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import wasserstein_distance

from departures_core.metrics import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    MetricInputError,
    activation_pcc,
    condition_metrics,
    e_distance,
    e_distance_pca_sq,
    emd,
    mmd,
    pearson_delta,
    top_de_genes,
)

# 1 gene; x = {0, 1}, y = {3, 5}
X1 = np.array([[0.0], [1.0]])
Y1 = np.array([[3.0], [5.0]])


# ---------------------------------------------------------------- hand values
def test_e_distance_by_hand():
    # cross |0-3|,|0-5|,|1-3|,|1-5| = 3,5,2,4 -> mean 3.5
    # within x (i<j): |0-1| = 1 ; within y: |3-5| = 2
    # E^2 = 2*3.5 - 1 - 2 = 4 -> E = 2
    assert e_distance(X1, Y1) == pytest.approx(2.0, abs=1e-12)


def test_e_distance_clips_negative_to_zero():
    # x={0,2}, y={1,5}: cross 1,5,1,3 -> 2.5; within 2 and 4; 2*2.5-2-4 = -1 -> clip -> 0
    assert e_distance([[0.0], [2.0]], [[1.0], [5.0]]) == 0.0


def test_e_distance_pca_sq_by_hand():
    # 1 gene -> 1 component; PCA is centring (+ sign) so distances are preserved.
    # cross sq: 9,25,4,16 -> 13.5; within x all pairs: (0+1+1+0)/4 = 0.5;
    # within y: (0+4+4+0)/4 = 2 -> 2*13.5 - 0.5 - 2 = 24.5 = 2*(4 - 0.5)^2
    assert e_distance_pca_sq(X1, Y1) == pytest.approx(24.5, rel=1e-10)


def test_emd_by_hand():
    # gene 0: x={0,1}, y={3,5}: sorted pairs (0,3),(1,5) -> (3+4)/2 = 3.5
    # gene 1: x={0,0}, y={0,2}: pairs (0,0),(0,2) -> (0+2)/2 = 1
    # mean over genes = (3.5 + 1)/2 = 2.25
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[3.0, 0.0], [5.0, 2.0]])
    assert emd(x, y) == pytest.approx(2.25, abs=1e-12)
    # unequal sizes: x={0}, y={0,1}: CDFs differ by 1/2 on [0,1) -> 0.5
    assert emd([[0.0]], [[0.0], [1.0]]) == pytest.approx(0.5, abs=1e-12)


def test_activation_pcc_by_hand():
    # pred > 0 fractions per gene: [0, 1/2, 1]; obs: [1/2, 0, 1]
    # centred: [-.5, 0, .5] and [0, -.5, .5]; cov = .25; var sums .5, .5 -> r = .25/.5 = .5
    pred = np.array([[0.0, 1.0, 1.0], [-1.0, 0.0, 2.0]])
    obs = np.array([[1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    assert activation_pcc(pred, obs) == pytest.approx(0.5, abs=1e-12)


def test_activation_pcc_constant_is_nan():
    # every gene active in every pred cell -> zero variance -> nan
    assert math.isnan(activation_pcc(np.ones((2, 3)), np.array([[1.0, 0, 0], [1, 1, 0]])))


def test_pearson_delta_by_hand():
    # mean(ctrl) = [1,1,1]; mean(pred) = [2,3,4] -> delta [1,2,3]
    # mean(obs) = [2,4,3] -> delta [1,3,2]; centred [-1,0,1], [-1,1,0]
    # cov = 1, var sums 2 and 2 -> r = 1/2
    ctrl = np.ones((2, 3))
    pred = np.array([[2.0, 3.0, 4.0]])
    obs = np.array([[1.0, 3.0, 2.0], [3.0, 5.0, 4.0]])
    assert pearson_delta(pred, obs, ctrl) == pytest.approx(0.5, abs=1e-12)


def test_mmd_by_hand():
    # x={0,1}, y={1}, e = exp(-g): k_xx mean = (1+1+2e)/4 = (1+e)/2; k_yy = 1;
    # k_xy mean = (e+1)/2 -> MMD^2 = (1+e)/2 + 1 - (1+e) = (1-e)/2
    x, y = np.array([[0.0], [1.0]]), np.array([[1.0]])
    assert mmd(x, y, gammas=(1.0,)) == pytest.approx((1 - math.exp(-1)) / 2, abs=1e-12)
    expected = np.mean([(1 - math.exp(-g)) / 2 for g in (1.0, 0.5)])
    assert mmd(x, y, gammas=(1.0, 0.5)) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- properties
def test_e_distance_matches_naive_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.normal(1.0, 2.0, size=(5, 4))

    def d(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    cross = np.mean([d(a, b) for a in x for b in y])
    wx = np.mean([d(x[i], x[j]) for i in range(7) for j in range(i + 1, 7)])
    wy = np.mean([d(y[i], y[j]) for i in range(5) for j in range(i + 1, 5)])
    naive = math.sqrt(2 * cross - wx - wy)
    assert e_distance(x, y) == pytest.approx(naive, rel=1e-9)
    assert e_distance(sp.csr_matrix(x), y) == pytest.approx(naive, rel=1e-9)


def test_e_distance_null_vs_spread_change_and_pca_blindness():
    rng = np.random.default_rng(1)
    n, d = 600, 10
    x = rng.normal(size=(n, d))
    y_same = rng.normal(size=(n, d))
    y_wide = rng.normal(scale=2.0, size=(n, d))  # same mean, sd x 2
    scale = math.sqrt(2 * d)  # typical |x_i - x_j|
    null = e_distance(x, y_same)
    spread = e_distance(x, y_wide)
    assert null < 0.05 * scale
    assert spread > 0.15 * scale
    assert spread > 4 * null
    # e_distance_pca_sq == 2||mean(x) - mean(y)||^2 (all components: rotation only)
    pca_sq = e_distance_pca_sq(x, y_wide, n_comps=d)
    dmean = x.mean(0) - y_wide.mean(0)
    assert pca_sq == pytest.approx(2 * dmean @ dmean, rel=1e-6)
    # ...which is ~0 relative to the mean squared cross distance (~d*(1+4) = 50)
    assert pca_sq < 0.02 * d * 5


def test_emd_equals_scipy_loop_unequal_sizes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(13, 30))
    y = rng.gamma(2.0, size=(21, 30))
    x[:, :5] = np.round(x[:, :5])  # ties within and across samples
    y[:, :5] = np.round(y[:, :5])
    x[:, 5] = 0.0
    loop = np.mean([wasserstein_distance(x[:, g], y[:, g]) for g in range(30)])
    assert emd(x, y) == pytest.approx(loop, rel=1e-12, abs=1e-12)


def test_mmd_zero_for_identical_and_grows_with_shift():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 3))
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    values = [mmd(x, x + s) for s in (0.2, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(values) > 0)
    assert values[0] > 0


def test_pearson_and_activation_equal_one_for_identical():
    rng = np.random.default_rng(4)
    obs = np.maximum(rng.normal(size=(20, 15)), 0)
    ctrl = np.maximum(rng.normal(size=(10, 15)), 0)
    assert pearson_delta(obs, obs, ctrl) == pytest.approx(1.0)
    assert activation_pcc(obs, obs) == pytest.approx(1.0)


# ---------------------------------------------------------------- DE genes
def _de_adata():
    rng = np.random.default_rng(5)
    n_per, n_genes = 30, 12
    groups = np.repeat(["ctrl", "A", "B"], n_per)
    x = rng.normal(2.0, 0.3, size=(3 * n_per, n_genes))
    a = groups == "A"
    x[a, 3] += 3.0
    x[a, 7] -= 2.5  # down-regulated: must rank by |score|
    x[a, 10] += 2.0
    x[groups == "B", 0] += 5.0  # B-only shift must not matter
    x[:, 11] = 0.0  # zero variance -> nan score -> last
    genes = [f"g{i}" for i in range(n_genes)]
    obs = pd.DataFrame({"cond": groups}, index=[f"c{i}" for i in range(len(groups))])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def test_top_de_genes_ranks_shifted_genes_first_and_does_not_mutate():
    adata = _de_adata()
    obs_before, x_before = adata.obs.copy(), adata.X.copy()
    top = top_de_genes(adata, groupby="cond", group="A", reference="ctrl", n=12)
    assert set(top[:3]) == {"g3", "g7", "g10"}
    assert top[0] == "g3"
    assert top[-1] == "g11"
    assert len(top) == 12 and len(set(top)) == 12
    assert top_de_genes(adata, groupby="cond", group="A", reference="ctrl", n=2) == top[:2]
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert dict(adata.uns) == {}
    np.testing.assert_array_equal(adata.X, x_before)


def test_top_de_genes_bad_group():
    adata = _de_adata()
    with pytest.raises(MetricInputError, match="'Z' has 0 cell"):
        top_de_genes(adata, groupby="cond", group="Z", reference="ctrl")
    with pytest.raises(MetricInputError, match="not in adata.obs"):
        top_de_genes(adata, groupby="nope", group="A", reference="ctrl")


# ---------------------------------------------------------------- condition_metrics
def test_condition_metrics_keys_and_nan_de():
    rng = np.random.default_rng(6)
    pred, obs, ctrl = (rng.normal(size=(8, 25)) for _ in range(3))
    out = condition_metrics(pred, obs, ctrl)
    assert tuple(out) == METRIC_NAMES
    assert set(LOWER_IS_BETTER) == set(METRIC_NAMES)
    assert LOWER_IS_BETTER["e_distance"] and not LOWER_IS_BETTER["pearson_delta_de20"]
    assert not LOWER_IS_BETTER["activation_pcc"]
    for k in ("e_distance_de20", "e_distance_de40", "emd_de20", "emd_de40"):
        assert math.isnan(out[k])
    assert math.isnan(out["pearson_delta_de20"])
    assert out["e_distance"] == pytest.approx(e_distance(pred, obs))
    assert out["mmd"] == pytest.approx(mmd(pred, obs))


def test_condition_metrics_de_subsets():
    rng = np.random.default_rng(7)
    pred, obs, ctrl = (rng.normal(size=(6, 50)) for _ in range(3))
    genes = [f"g{i}" for i in range(50)]
    de = ["missing"] + [f"g{i}" for i in range(49, -1, -1)]  # top first; unknown skipped
    out = condition_metrics(pred, obs, ctrl, genes=genes, de_genes=de)
    c20, c40 = np.arange(49, 29, -1), np.arange(49, 9, -1)
    assert out["e_distance_de20"] == pytest.approx(e_distance(pred[:, c20], obs[:, c20]))
    assert out["emd_de40"] == pytest.approx(emd(pred[:, c40], obs[:, c40]))
    expected = pearson_delta(pred[:, c20], obs[:, c20], ctrl[:, c20])
    assert out["pearson_delta_de20"] == pytest.approx(expected)


def test_means_of_a_larger_sample_steady_the_mean_metrics_only():
    """A weak true shift, predicted exactly but sampled with noise: read off 30 cells, the
    predicted mean shift hardly correlates with the observed one; off 3,000 cells of the same
    prediction it does. The distances still compare the 30 cells."""
    rng = np.random.default_rng(8)
    genes, shift = 40, rng.normal(0.0, 0.06, 40)
    ctrl = rng.normal(0.0, 0.2, (2000, genes))  # observed means known precisely
    obs = rng.normal(0.0, 0.2, (2000, genes)) + shift
    pred, more = (rng.normal(size=(n, genes)) + shift for n in (30, 3000))
    names = [f"g{i}" for i in range(genes)]
    plain = condition_metrics(pred, obs, ctrl, genes=names, de_genes=names)
    steady = condition_metrics(pred, obs, ctrl, genes=names, de_genes=names, means_from=more)
    assert steady["pearson_delta"] > 0.9 > plain["pearson_delta"] + 0.3
    assert steady["pearson_delta"] == pytest.approx(pearson_delta(more, obs, ctrl))
    assert steady["pearson_delta_de20"] == pytest.approx(
        pearson_delta(more[:, :20], obs[:, :20], ctrl[:, :20])
    )
    for name in ("e_distance", "emd", "mmd", "e_distance_de20"):
        assert steady[name] == pytest.approx(plain[name])
    with pytest.raises(MetricInputError):
        condition_metrics(pred, obs, ctrl, means_from=more[:, :5])


# ---------------------------------------------------------------- errors
def test_mismatched_gene_counts_raise():
    with pytest.raises(MetricInputError, match="gene counts differ"):
        e_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MetricInputError, match="gene counts differ"):
        pearson_delta(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(MetricInputError, match="len\\(genes\\)"):
        condition_metrics(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), genes=["a"])


def test_too_few_cells_raise():
    with pytest.raises(MetricInputError, match="x needs at least 2 cell"):
        e_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(MetricInputError, match="obs needs at least 2 cell"):
        condition_metrics(np.zeros((3, 2)), np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(MetricInputError, match="must be 2-D"):
        emd(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(MetricInputError, match="NaN"):
        mmd(np.array([[np.nan]]), np.zeros((3, 1)))
    assert issubclass(MetricInputError, ValueError)
