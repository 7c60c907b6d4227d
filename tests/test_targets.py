"""An untrained perturbation's own gene, when it is measured (`departures_core.targets`)."""

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from departures_core import explore, notes, runs, targets
from departures_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from departures_core.data import populations

GENES = [f"G{i}" for i in range(30)]
KNOCKED_OUT = GENES[:7]  # G6 is held out
KEPT_ON = 0.15  # share of a target's expressing cells that still express it after the KO


def _cells(rng, n: int, target: str | None = None) -> np.ndarray:
    """``n`` cells of a screen in one cell line: every gene on in ~70 % of cells around 2;
    a knock-out switches its target off in all but `KEPT_ON` of the cells expressing it and
    halves the rest, and lowers one downstream gene (``G20``) by 0.5."""
    x = np.maximum(rng.normal(2.0, 0.4, (n, len(GENES))), 0.1) * (rng.random((n, 30)) < 0.7)
    if target is not None:
        g = GENES.index(target)
        x[:, g] *= 0.5 * (rng.random(n) < KEPT_ON)
        x[:, 20] = np.maximum(x[:, 20] - 0.5, 0) * (x[:, 20] > 0)
    return x.astype(np.float32)


def _screen(rng, cells: int = 80) -> ad.AnnData:
    blocks = [_cells(rng, 2 * cells)] + [_cells(rng, cells, t) for t in KNOCKED_OUT]
    labels = ["control"] * (2 * cells) + [t for t in KNOCKED_OUT for _ in range(cells)]
    obs = pd.DataFrame({"pert": labels, "ct": "line"})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(np.vstack(blocks), obs=obs)
    adata.var_names = GENES
    return adata


def test_the_fit_learns_what_a_screen_does_to_its_own_genes():
    """Six trained knock-outs of measured genes: the fit recovers how the share of cells
    expressing the target falls (logit scale) and how its active values scale; the
    transform then gives a new target the knock-out's share and values from its control
    values, and leaves a gene that is never expressed at 0."""
    rng = np.random.default_rng(0)
    data = populations(
        _screen(rng, cells=200),
        DataConfig(
            perturbation_key="pert", cell_type_key="ct", holdout=["G6"], validation_fraction=0.0
        ),
        seed=0,
    )
    fitted = targets.fit(data)
    assert fitted["overall"]["n"] == 6 and fitted["cell_type"]["line"]["n"] == 6
    expected = np.log(0.7 * KEPT_ON / (1 - 0.7 * KEPT_ON)) - np.log(0.7 / 0.3)
    assert fitted["overall"]["logit"] == pytest.approx(expected, abs=0.35)
    assert fitted["overall"]["scale"] == pytest.approx(0.5, abs=0.08)

    control = _cells(rng, 2000)[:, 6]
    observed = _cells(rng, 2000, "G6")[:, 6]
    change, own = targets.for_cell_type(fitted, "line")
    predicted = targets.transform(control, change["logit"], change["scale"], rng)
    assert own
    assert np.mean(predicted > 0) == pytest.approx(np.mean(observed > 0), abs=0.03)
    assert predicted[predicted > 0].mean() == pytest.approx(observed[observed > 0].mean(), rel=0.1)
    assert not np.any(targets.transform(np.zeros(50), change["logit"], 1.0, rng))

    up = targets.transform(control, -change["logit"], 2.0, rng)  # an activation instead
    assert np.mean(up > 0) > 0.95 and up[up > 0].mean() == pytest.approx(4.0, rel=0.1)


def test_a_screen_with_too_few_measured_targets_learns_nothing():
    rng = np.random.default_rng(1)
    adata = _screen(rng)
    adata.obs["pert"] = adata.obs["pert"].replace({"G0": "X0", "G1": "X1", "G2": "X2", "G3": "X3"})
    data = populations(
        adata,
        DataConfig(
            perturbation_key="pert", cell_type_key="ct", holdout=["G6"], validation_fraction=0.0
        ),
        seed=0,
    )
    assert targets.fit(data) is None  # G4 and G5: two measured targets


@pytest.fixture(scope="module")
def screen_run(tmp_path_factory):
    """A tiny model trained on the screen with the knock-out of G6 held out."""
    config = RunConfig(
        seed=0,
        data=DataConfig(
            perturbation_key="pert", cell_type_key="ct", holdout=["G6"], validation_fraction=0.0
        ),
        model=ModelConfig(hidden=64, cond_dim=32),
        train=TrainConfig(epochs=3, batch_size=128, device="cpu"),
    )
    run_dir = tmp_path_factory.mktemp("screen") / "run"
    runs.train(_screen(np.random.default_rng(2)), config, run_dir, progress_bar=False)
    return runs.open_run(run_dir)


def test_a_held_out_knock_out_switches_its_own_gene_off_and_says_so(screen_run):
    """The model never saw G6's knock-out: its prediction knocks G6 down as the trained
    knock-outs knocked theirs (observed: ~10 % of cells express it, at ~1), where the bridges
    alone leave it at the control's ~70 %. Other genes, and a trained knock-out, are the
    bridges' own; the trajectory ends at the new values; the note says why."""
    run, g = screen_run, GENES.index("G6")
    cond = next(c for c in run.data.conditions if c.perturbation == "G6")
    assert cond.held_out and run.unaffected["target"]["overall"]["n"] == 6
    row = [(cond.perturbation, cond.cell_type, cond.dose)] * len(cond.control)
    sim = runs.simulate_from(run, cond.control, row, steps=10, seed=0, trajectory=True)
    plain = dataclasses.replace(run, unaffected={**run.unaffected, "target": None})
    before = runs.simulate_from(plain, cond.control, row, steps=10, seed=0, trajectory=True)
    before = before.prediction

    observed = run.data.x[cond.perturbed, g]
    assert np.mean(before[:, g] > 0) > 0.5
    assert abs(np.mean(sim.prediction[:, g] > 0) - np.mean(observed > 0)) < 0.08
    other = np.arange(len(GENES)) != g
    np.testing.assert_array_equal(sim.prediction[:, other], before[:, other])
    np.testing.assert_allclose(sim.x_path[-1][:, g], sim.prediction[:, g], atol=1e-6)

    ((gene, share_before, share_after, scale, own, n),) = sim.targets[row[0]]
    assert (gene, own, n) == ("G6", True, 6) and share_after < share_before / 3
    assert scale == pytest.approx(0.5, abs=0.1)
    trained = next(c for c in run.data.conditions if c.perturbation == "G0")
    rows0 = [(trained.perturbation, trained.cell_type, trained.dose)] * 20
    assert runs.simulate_from(run, trained.control[:20], rows0, steps=10).targets == {}

    shown = explore.condition_cells(run, "G6", "line", steps=10)
    note = notes.responder_note(shown)
    assert "G6, the perturbed gene, is measured but was never trained" in note
    assert "own genes of 6 training perturbations in line did" in note


def test_a_knock_out_of_a_gene_never_perturbed_lowers_that_gene(screen_run):
    """A user asks for the knock-out of G9, a measured gene no cell of the screen was
    perturbed in: the predicted cells express G9 far less than the control cells do, as
    the screen's knock-outs lowered their genes, and keep the other genes' control share."""
    predicted = runs.predict(screen_run, "G9", n_cells=400, steps=10)
    control = screen_run.data.x[screen_run.data.control_indices("line")]
    x = np.asarray(predicted.X)
    g = GENES.index("G9")
    assert np.mean(x[:, g] > 0) < 0.25 < 0.6 < np.mean(control[:, g] > 0)
    other = [GENES.index(n) for n in ("G10", "G15", "G25")]
    np.testing.assert_allclose(
        np.mean(x[:, other] > 0, axis=0), np.mean(control[:, other] > 0, axis=0), atol=0.15
    )
