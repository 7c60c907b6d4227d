"""The additive, linear and nearest baselines and their tuning on validation perturbations."""

import dataclasses

import numpy as np
import pytest

from departures_core import baselines
from departures_core.data import Condition, Expression, PerturbationData, Split

N_GENES = 6


def _condition(p, ct, rows, ctrl, held_out, validation):
    if "validation" in Condition.__dataclass_fields__:
        return Condition(p, ct, 0.0, rows, ctrl, held_out, validation=validation)
    return Condition(p, ct, 0.0, rows, ctrl, held_out)


def build(shifts, *, held=(), validation=(), n_ctrl=12, zeros=False, seed=0):
    """Data whose perturbed cells are their cell type's controls + the given shift, floored
    at 0 as log-normalised data is: where nothing floors, each condition's mean shift is
    exactly ``shifts[(p, ct)]``. ``held``/``validation``: ``(p, ct)`` held out / validation."""
    rng = np.random.default_rng(seed)
    rows, pert, ctype, conds = [], [], [], []
    cell_types = sorted({ct for _, ct in shifts})
    controls = {}
    for ct in cell_types:
        base = 2.0 + rng.random((n_ctrl, N_GENES))
        if zeros:
            base[rng.random(base.shape) < 0.3] = 0.0
        controls[ct] = np.arange(len(rows), len(rows) + n_ctrl)
        rows += list(base)
        pert += ["ctrl"] * n_ctrl
        ctype += [ct] * n_ctrl
    for (p, ct), shift in shifts.items():
        idx = np.arange(len(rows), len(rows) + n_ctrl)
        rows += [np.maximum(r + shift, 0.0) for r in np.asarray(rows)[controls[ct]]]
        pert += [p] * n_ctrl
        ctype += [ct] * n_ctrl
        conds.append(_condition(p, ct, idx, controls[ct], (p, ct) in held, (p, ct) in validation))
    x = np.asarray(rows)
    train = sorted({p for p, ct in shifts if (p, ct) not in held})
    split = Split(tuple(train), tuple(sorted({p for p, _ in held})))
    data = PerturbationData(
        Expression(x),
        [f"g{i}" for i in range(N_GENES)],
        np.array([f"c{i}" for i in range(len(x))]),
        np.array(pert),
        np.array(ctype),
        "ctrl",
        split,
        conds,
    )
    if validation and not hasattr(data, "validation_conditions"):
        data = _WithValidation(**vars(data))
        data.names = set(validation)
    return data


class _WithValidation(PerturbationData):
    """Stands in for data.py's validation conditions where they do not exist yet."""

    names: set = set()

    def train_conditions(self):
        return [c for c in super().train_conditions() if self._key(c) not in self.names]

    def validation_conditions(self):
        return [c for c in super().train_conditions() if self._key(c) in self.names]

    @staticmethod
    def _key(c):
        return (c.perturbation, c.cell_type)


def _vec(rng, scale=0.4):
    return rng.uniform(-scale, scale, N_GENES)


def _mean_change(data, cond, cells):
    return cells.mean(0) - data.x[cond.control].mean(0)


def test_additive_is_exact_on_additive_data_with_its_fallbacks():
    rng = np.random.default_rng(1)
    sa, sb, sc, se = (_vec(rng) for _ in range(4))
    shifts = {
        ("A", "t"): sa,
        ("B", "t"): sb,
        ("A+C", "t"): sa + sc,  # C only inside a trained combination
        ("E", "u"): se,  # E only in another cell type
        ("A+B", "t"): sa + sb,
        ("B+C", "t"): sb + sc,
        ("A+E", "t"): sa + se,
        ("A+D", "t"): sa + _vec(rng),  # D never trained
    }
    held = {("A+B", "t"), ("B+C", "t"), ("A+E", "t"), ("A+D", "t")}
    data = build(shifts, held=held)
    predict = baselines.additive_predictor(data)
    for p, expected in (("A+B", sa + sb), ("B+C", sb + sc), ("A+E", sa + se), ("A+D", sa)):
        cond = data.find(p, "t")
        np.testing.assert_allclose(_mean_change(data, cond, predict(cond)), expected, atol=1e-5)
    assert predict.missing == {("A+D", "t"): ["D"]}


def test_additive_single_falls_back_to_other_cell_type_then_cell_type_mean():
    rng = np.random.default_rng(2)
    sx_u, sa, sb = _vec(rng), _vec(rng), _vec(rng)
    shifts = {
        ("X", "u"): sx_u,
        ("A", "t"): sa,
        ("B", "t"): sb,
        ("X", "t"): _vec(rng),
        ("Y", "t"): _vec(rng),
    }
    data = build(shifts, held={("X", "t"), ("Y", "t")})
    predict = baselines.additive_predictor(data)
    np.testing.assert_allclose(predict.shift(data.find("X", "t")), sx_u, atol=1e-5)
    np.testing.assert_allclose(predict.shift(data.find("Y", "t")), (sa + sb) / 2, atol=1e-5)


def _groups(rng, n=3):
    """Two groups of training singles, each group sharing one response; a held-out member."""
    s1, s2 = np.full(N_GENES, 0.5), np.full(N_GENES, -0.5)
    shifts = {}
    for g, s in (("P", s1), ("Q", s2)):
        for i in range(n + 1):
            shifts[(f"{g}{i}", "t")] = s + rng.normal(0, 0.02, N_GENES)
    return shifts, s1, s2


def _group_features(perturbations):
    return np.array([[p.startswith("P"), p.startswith("Q")] for p in perturbations], float)


def test_linear_features_that_identify_neighbours_beat_the_intercept():
    shifts, s1, _ = _groups(np.random.default_rng(3))
    data = build(shifts, held={("P3", "t"), ("Q3", "t")})
    predict = baselines.linear_predictor(data, _group_features, alpha=0.1)
    change = predict.change(data.find("P3", "t"))
    intercept = np.mean([s for k, s in shifts.items() if k[0][1] != "3"], axis=0)
    assert np.abs(change - s1).max() < 0.25 * np.abs(intercept - s1).max()


def test_linear_with_zero_features_is_the_mean_change_and_additive_where_trained():
    rng = np.random.default_rng(4)
    sa, sb, sc = (_vec(rng) for _ in range(3))
    shifts = {("A", "t"): sa, ("B", "t"): sb, ("C", "t"): sc, ("A+C", "t"): sa + sc}
    shifts |= {("Z", "t"): _vec(rng), ("A+B", "t"): sa + sb}
    data = build(shifts, held={("Z", "t"), ("A+B", "t")})

    def zero(perturbations):
        return np.zeros((len(perturbations), 4))

    predict = baselines.linear_predictor(data, zero, alpha=1.0)
    mean_change = np.mean([sa, sb, sc, sa + sc], axis=0)
    np.testing.assert_allclose(predict.change(data.find("Z", "t")), mean_change, atol=1e-5)
    np.testing.assert_allclose(predict.change(data.find("A+B", "t")), sa + sb, atol=1e-5)


def test_linear_pools_cell_types_with_few_perturbations_with_their_offset():
    shifts, _, _ = _groups(np.random.default_rng(5))
    shifts[("R", "v")] = np.full(N_GENES, 0.3)
    shifts[("S", "v")] = np.full(N_GENES, 0.3)
    data = build(shifts, held={("S", "v")})
    predict = baselines.linear_predictor(data, lambda ps: np.zeros((len(ps), 1)))
    np.testing.assert_allclose(predict.change(data.find("S", "v")), 0.3, atol=1e-5)
    assert set(predict.fits) == {"t"}


def _origin(data):
    """Perturbation of each (distinct) row of the data."""
    x = np.asarray(data.x)
    return {x[i].tobytes(): data.perturbation[i] for i in range(len(x))}


def test_nearest_with_one_perfect_neighbour_and_no_prior_returns_its_cells():
    shifts, _, _ = _groups(np.random.default_rng(6))
    data = build(shifts, held={("P3", "t")})

    def similarity(new, names):
        return np.array([name == "P1" for name in names], float)

    predict = baselines.nearest_predictor(data, similarity, prior=0.0)
    cond = data.find("P3", "t")
    cells = predict(cond)
    assert cells.shape == (len(cond.control), N_GENES)
    origin = _origin(data)
    assert {origin[row.tobytes()] for row in cells} == {"P1"}
    assert len({row.tobytes() for row in cells}) == len(cells)  # without replacement
    np.testing.assert_array_equal(predict(cond), cells)  # deterministic per condition


def test_nearest_with_prior_one_is_uniform_over_training_perturbations():
    shifts, _, _ = _groups(np.random.default_rng(7))
    data = build(shifts, held={("P3", "t")}, n_ctrl=700)

    def similarity(new, names):
        return np.array([name == "P1" for name in names], float)

    predict = baselines.nearest_predictor(data, similarity, prior=1.0)
    cond = data.find("P3", "t")
    names, w = predict.weights(cond)
    assert sorted(names) == sorted(k[0] for k in shifts if k[0] != "P3")
    np.testing.assert_allclose(w, 1 / len(names))
    origin = _origin(data)
    counts = {n: 0 for n in names}
    for row in predict(cond):
        counts[origin[row.tobytes()]] += 1
    expected = len(cond.control) / len(names)
    assert all(abs(c - expected) < 0.3 * expected for c in counts.values())


def _all_predictors(data):
    return {
        "additive": baselines.additive_predictor(data),
        "linear": baselines.linear_predictor(data, _group_features),
        "nearest": baselines.nearest_predictor(data, lambda new, names: np.ones(len(names))),
    }


def _floored_data(zeros=True):
    shifts, _, _ = _groups(np.random.default_rng(8))
    shifts = {k: s * 8 for k, s in shifts.items()}  # -4: below the controls' 2..3
    shifts[("P0+Q0", "t")] = shifts[("P0", "t")] + shifts[("Q0", "t")]
    shifts[("Q0+Q1", "t")] = shifts[("Q0", "t")] + shifts[("Q1", "t")]
    held = {("P3", "t"), ("Q3", "t"), ("P0+Q0", "t"), ("Q0+Q1", "t")}
    return build(shifts, held=held, validation={("P2", "t")}, zeros=zeros), held


def test_outputs_are_non_negative_with_one_cell_per_control():
    data, held = _floored_data()
    for name, predict in _all_predictors(data).items():
        floored = 0
        for p, ct in held:
            cond = data.find(p, ct)
            cells = predict(cond)
            assert cells.shape == (len(cond.control), N_GENES), name
            assert (cells >= 0).all(), name
            floored += (cells == 0).sum()
        assert floored > 0, name  # shifts of -4 (Q3) and -8 (Q0+Q1) floor
    linear = _all_predictors(data)["linear"]
    cond = data.find("P3", "t")
    ctrl = data.x[cond.control]
    assert (linear(cond)[ctrl == 0] == 0).all()  # zeros stay zero


def test_no_predictor_reads_held_out_or_validation_perturbed_cells():
    data, held = _floored_data(zeros=False)
    x = np.asarray(data.x).copy()
    hidden = [c for c in data.conditions if c.held_out]
    hidden += baselines.validation_conditions(data)
    assert len(hidden) == len(held) + 1
    for c in hidden:
        x[c.perturbed] = np.nan
    blind = dataclasses.replace(data, x=Expression(x))
    if isinstance(data, _WithValidation):
        blind.names = data.names
    for name, predict in _all_predictors(blind).items():
        for c in hidden:
            assert np.isfinite(predict(c)).all(), name


def _mean_error(pred, obs, ctrl):
    return float(np.abs(pred.mean(0) - obs.mean(0)).mean())


def test_tune_picks_the_setting_best_on_validation():
    shifts, _, _ = _groups(np.random.default_rng(9))
    shifts = {k: s for k, s in shifts.items() if k[0] not in ("P3", "Q3")}
    shifts[("P3", "t")] = np.full(N_GENES, 0.5)
    data = build(shifts, validation={("P3", "t")})
    assert [c.perturbation for c in baselines.validation_conditions(data)] == ["P3"]
    assert "P3" not in {c.perturbation for c in data.train_conditions()}

    def make_linear(**s):
        return baselines.linear_predictor(data, _group_features, **s)

    best, table = baselines.tune(data, "linear", make_linear, metric=_mean_error)
    assert best == {"alpha": 0.1}
    assert list(table["alpha"]) == [0.1, 1.0, 10.0, 100.0]
    assert table["median"].is_monotonic_increasing and (table["n"] == 1).all()

    def similarity(new, names):
        return np.array([n[0] == new[0] for n in names], float)

    def make_nearest(**s):
        return baselines.nearest_predictor(data, similarity, **s)

    best, table = baselines.tune(data, "nearest", make_nearest, metric=_mean_error)
    assert best == {"prior": 0.0} and table["median"].iloc[0] < table["median"].iloc[-1]


def test_tune_without_validation_gives_the_defaults():
    shifts, _, _ = _groups(np.random.default_rng(10))
    data = build(shifts, held={("P3", "t")})
    best, table = baselines.tune(data, "linear", lambda **s: pytest.fail(), metric=_mean_error)
    assert best == {"alpha": 1.0} and table.empty
    assert baselines.default_setting("nearest") == {"prior": 0.1}
