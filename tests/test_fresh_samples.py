"""Every predicted cell is its own draw: asked for more cells than there are control cells, the
non-responders that would repeat a control cell are fresh draws near it (`sample.fresh_unchanged`),
while the first use of each control cell, the share of non-responders and the per-gene means
stay as they were. On the shipped demo run (assets/demo-run)."""

import numpy as np
import pytest

from departures_core import calibration, demo, evaluate, runs, sample


@pytest.fixture(scope="module")
def shipped():
    return runs.open_run(demo.DEMO_RUN)


def _most_unaffected(run):
    """The training condition with the largest fitted unaffected fraction (1.0 on the demo)."""
    fitted = run.unaffected["condition"]
    cond = max(
        run.data.train_conditions(),
        key=lambda c: fitted[calibration.condition_key(c.perturbation, c.cell_type, c.dose)],
    )
    return cond, (cond.perturbation, cond.cell_type, cond.dose)


def _held_out(run):
    """A held-out condition: its fraction is read off the bridges' predicted effect."""
    cond = next(c for c in run.data.conditions if c.held_out)
    return cond, (cond.perturbation, cond.cell_type, cond.dose)


def _duplicates(x: np.ndarray) -> int:
    return len(x) - len(np.unique(x, axis=0))


def test_a_prediction_of_three_times_the_controls_has_no_duplicate_cells(shipped):
    for cond, _ in (_most_unaffected(shipped), _held_out(shipped)):
        n = 3 * len(cond.control)
        pred = runs.predict(
            shipped, cond.perturbation, cell_type=cond.cell_type, n_cells=n, steps=5
        )
        assert pred.n_obs == n and _duplicates(np.asarray(pred.X)) == 0
        # each control cell starts 3 cells: evenly, not drawn with replacement
        counts = pred.obs["control_cell"].value_counts()
        assert len(counts) == len(cond.control) and set(counts) == {3}
    uneven = runs.predict(
        shipped, cond.perturbation, cell_type=cond.cell_type, n_cells=n + 7, steps=5
    )
    assert set(uneven.obs["control_cell"].value_counts()) == {3, 4}
    assert _duplicates(np.asarray(uneven.X)) == 0


def test_repeated_start_rows_of_the_evaluation_give_distinct_cells(shipped):
    """The path `evaluate` reads a condition's means off: each control row repeated to
    `evaluate.MEAN_CELLS` (20 copies on the demo)."""
    cond, row = _most_unaffected(shipped)
    start = evaluate.start_rows(cond.control, evaluate.MEAN_CELLS)
    sim = runs.simulate_from(shipped, start, [row] * len(start), steps=5)
    assert sim.unchanged.mean() > 0.9  # nearly all are non-responders, 20 per control cell
    assert _duplicates(sim.prediction) == 0


def test_the_same_seed_gives_the_same_cells(shipped):
    cond, _ = _most_unaffected(shipped)
    n = 3 * len(cond.control)

    def predict(seed):
        return runs.predict(
            shipped, cond.perturbation, cell_type=cond.cell_type, n_cells=n, seed=seed, steps=5
        ).X

    first = np.asarray(predict(0))
    np.testing.assert_array_equal(first, np.asarray(predict(0)))
    assert not np.array_equal(first, np.asarray(predict(1)))


def test_the_first_use_of_each_control_cell_is_that_control_cell(shipped):
    """One cell per control cell: every non-responder is its control cell (shifted as the
    cell type's non-responders are), exactly as before; three per control cell: the first
    non-responder of each control cell still is, the others are not."""
    cond, row = _most_unaffected(shipped)
    shift = (shipped.unaffected.get("shift") or {}).get(cond.cell_type)
    for copies in (1, 3):
        start = evaluate.start_rows(cond.control, copies * len(cond.control))
        sim = runs.simulate_from(shipped, start, [row] * len(start), steps=5)
        exact = calibration.shift_active(shipped.data.x[start], shift)
        kept = np.flatnonzero(sim.unchanged)
        _, first = np.unique(start[kept], return_index=True)
        np.testing.assert_array_equal(sim.prediction[kept[first]], exact[kept[first]])
        repeats = np.setdiff1d(kept, kept[first])
        assert len(repeats) == (0 if copies == 1 else len(kept) - len(first)) and (
            copies == 1 or len(repeats) > len(cond.control)
        )
        assert not (sim.prediction[repeats] == exact[repeats]).all(1).any()


def test_without_repeats_the_unperturbed_states_are_the_control_cells():
    rng = np.random.default_rng(0)
    x0 = rng.random((30, 8)).astype(np.float32) * (rng.random((30, 8)) < 0.5)
    keep = rng.random(30) < 0.6
    groups = [np.arange(15), np.arange(15, 30)]
    sources = np.arange(30) % 15  # the two conditions start from the same 15 control cells
    np.testing.assert_array_equal(sample.fresh_unchanged(x0, keep, groups, sources, 0), x0)


def test_the_share_of_non_responders_is_kept(shipped):
    cond, row = _held_out(shipped)
    one = runs.simulate_from(shipped, cond.control, [row] * len(cond.control), steps=5)
    w = one.responders[row][0]
    start = evaluate.start_rows(cond.control, 3 * len(cond.control))
    three = runs.simulate_from(shipped, start, [row] * len(start), steps=5)
    assert three.responders[row][0] == pytest.approx(w, abs=0.05)
    assert abs(three.unchanged.sum() - three.responders[row][0] * len(start)) < 1
    _, per_control = np.unique(start[three.unchanged], return_counts=True)
    assert per_control.max() <= np.ceil(3 * three.responders[row][0])


def test_fresh_draws_keep_each_genes_mean_and_active_share(shipped):
    """All cells non-responders: the one-per-control prediction is the control cells; three
    per control cell, two thirds of them fresh draws, keep each gene's mean and the share of
    cells expressing it (within a tenth of the gene's spread over the controls)."""
    cond, row = _most_unaffected(shipped)
    assert shipped.unaffected["condition"][calibration.condition_key(*row)] == 1.0
    one = runs.simulate_from(shipped, cond.control, [row] * len(cond.control), steps=5)
    start = evaluate.start_rows(cond.control, 3 * len(cond.control))
    three = runs.simulate_from(shipped, start, [row] * len(start), steps=5)
    assert one.unchanged.all() and three.unchanged.all()
    spread = one.prediction.std(0) + 1e-6
    assert np.abs(three.prediction.mean(0) - one.prediction.mean(0)).max() < 0.1 * spread.max()
    assert np.median(np.abs(three.prediction.mean(0) - one.prediction.mean(0)) / spread) < 0.05
    active = np.abs((three.prediction > 0).mean(0) - (one.prediction > 0).mean(0))
    assert active.max() < 0.06 and active.mean() < 0.015


def test_partners_are_a_permutation_of_other_control_cells():
    """Each repeated control cell lends its genes exactly as often as it is repeated, so the
    fresh draws' genes keep the controls' distribution, however often a cell is a neighbour."""
    rng = np.random.default_rng(1)
    x = rng.random((20, 5))
    for sources in (np.resize(np.arange(20), 100), np.repeat(np.arange(20), [9] + [1] * 19)):
        partner = sample._partners(x[sources], sources, np.random.default_rng(0))
        assert sorted(partner) == list(range(len(sources)))
        assert (sources[partner] != sources).all()
    # a cell repeated more often than all others together: its rows left over get -1
    lopsided = np.repeat([0, 1], [5, 2])
    partner = sample._partners(x[lopsided], lopsided, np.random.default_rng(0))
    assert (partner < 0).sum() == 3 and (
        lopsided[partner[partner >= 0]] != lopsided[partner >= 0]
    ).all()
