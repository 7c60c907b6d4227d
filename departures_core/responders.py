"""A run's non-responders: fitted when training finishes (``responders.json``), read with the
run, and drawn into every simulation of it. The estimates themselves are in `calibration`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import calibration, keys, spread, targets, transfer
from .data import PerturbationData
from .model import Departures, atomic_write_text
from .nn import UNKNOWN
from .sample import (
    Simulation,
    draw_unchanged,
    fresh_unchanged,
    keep_genes_unchanged,
    keep_unchanged,
    simulate_rows,
)
from .train import validation_split


def write(
    model: Departures, data: PerturbationData, validation: dict, run_dir: Path, device
) -> dict:
    """Fit the unaffected fraction of each training condition (`calibration.fit_unaffected`)
    on its validation cells (kept out of training), save it as ``responders.json``."""

    def bridges(cond, rows):
        row = (cond.perturbation, cond.cell_type, cond.dose)
        return simulate_rows(
            model,
            data.x[rows],
            [row] * len(rows),
            steps=model.config.bridge.steps,
            seed=model.config.seed,
            device=device,
        ).prediction

    fractions = calibration.fit_unaffected(
        data, bridges, observed=validation, seed=model.config.seed
    )
    atomic_write_text(run_dir / keys.RESPONDERS_FILE, json.dumps(fractions, indent=1))
    return fractions


def refit(run, device) -> dict:
    """Fit an opened run's non-responders again (`write`) on the same validation cells it
    kept out of training, with its model's current settings; for a run whose
    ``responders.json`` predates a change of how they are fitted or sampled."""
    config = run.model.config
    _, validation = validation_split(run.data, config.train.validation, config.seed)
    run.unaffected = write(run.model, run.data, validation, run.path, device)
    return run.unaffected


def read(run_dir: Path) -> dict | None:
    """The run's unaffected fractions; None (every cell responds) when absent or unreadable."""
    path = Path(run_dir) / keys.RESPONDERS_FILE
    try:
        fractions = json.loads(path.read_text())
        return fractions if {"condition", "cell_type", "overall"} <= set(fractions) else None
    except (OSError, ValueError, TypeError):
        return None


def draw(
    sim: Simulation,
    fractions: dict,
    rows: list,
    x0: np.ndarray,
    seed: int,
    transfer: bool = True,
    sources: np.ndarray | None = None,
    vocab=None,
) -> None:
    """Draw each condition's non-responders into ``sim`` (in place): they stay their control
    cell, with the cell type's shift of its active genes when the fit found one
    (`calibration.shift_active`); a non-responder whose control cell is already one of its
    condition's is a fresh draw near it instead (`sample.fresh_unchanged`). A condition
    without its own fraction takes it from the bridges' predicted effect
    (`calibration.unaffected_source`); ``sim.responders`` says which and from where. Then
    a perturbation predicted for a cell type it was not trained in keeps, gene by gene, only
    the changes that carry over (`transfer_genes`).
    ``sources`` (the control cell each row starts from) spreads a condition's
    non-responders evenly over its control cells (`sample.draw_unchanged`). Last, given the
    model's ``vocab``, the measured genes of perturbations it was never trained on change as
    the training perturbations' own genes did (`set_targets`)."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row, []).append(i)
    factors = fractions.get("spread")
    if factors:
        sim.spread = {}
        for row, idx in groups.items():
            used = _spread_factors(fractions, row)
            factor = spread.factor_for(used, row[1])
            sim.spread[row] = (factor, row[1] in used["cell_type"])
            scale_bridges(sim, np.asarray(idx), factor)
    sim.responders = {}
    for row, idx in groups.items():
        effect = calibration.predicted_effect(sim.prediction[idx], x0[idx])
        sim.responders[row] = calibration.unaffected_source(fractions, *row, effect=effect)
    keep = draw_unchanged(
        [np.asarray(idx) for idx in groups.values()],
        [w for w, _ in sim.responders.values()],
        len(rows),
        seed,
        sources,
    )
    x0 = np.asarray(x0, dtype=np.float32)
    shifts = fractions.get("shift") or {}
    sources = np.arange(len(rows)) if sources is None else np.asarray(sources)
    end = fresh_unchanged(x0, keep, [np.asarray(i) for i in groups.values()], sources, seed)
    for (_, cell_type, _), idx in groups.items():
        if cell_type in shifts:
            end[idx] = calibration.shift_active(end[idx], shifts[cell_type])
    keep_unchanged(sim, x0, keep, end)
    sim.responders_shift = tuple(ct for (_, ct, _) in groups if ct in shifts)
    if transfer:
        transfer_genes(sim, fractions, groups, x0, end, seed, sources)
    if vocab is not None:
        set_targets(sim, fractions, groups, x0, vocab, seed)


def _spread_factors(fractions: dict, row: tuple) -> dict:
    """The spread factors a condition's bridges are scaled by: those of the training
    conditions for one of them, else those of the validation conditions when the run has
    them (a perturbation the network never saw spreads like the unseen ones did)."""
    unseen = (fractions.get("unseen") or {}).get("spread")
    trained = calibration.condition_key(*row) in fractions["condition"]
    return fractions["spread"] if trained or not unseen else unseen


def set_targets(sim: Simulation, fractions: dict, groups: dict, x0, vocab, seed: int) -> None:
    """A perturbation part the model was never trained on whose gene is measured: that
    gene, in every cell of the condition, goes from the cell's control value as the
    training perturbations' measured targets did (`targets.transform`), along a straight
    line. ``sim.targets`` records, per condition, ``(gene, share expressing it in the
    control cells, predicted share, scale, measured in this cell type, perturbations
    learned from)``."""
    fitted = fractions.get("target")
    if not fitted:
        return
    rng = np.random.default_rng([int(seed), 3])
    index = targets.gene_index(vocab.genes)
    keep = np.zeros(sim.prediction.shape, dtype=bool)
    end = sim.prediction.copy()
    sim.targets = {}
    for row, idx in groups.items():
        perturbation, cell_type, _ = row
        unseen = [
            (part, g)
            for part, g in targets.measured_targets(perturbation, index)
            if vocab.token_id(part) == UNKNOWN
        ]
        if not unseen:
            continue
        idx = np.asarray(idx)
        change, own = targets.for_cell_type(fitted, cell_type)
        sim.targets[row] = []
        for part, g in unseen:
            keep[idx, g] = True
            end[idx, g] = targets.transform(x0[idx, g], change["logit"], change["scale"], rng)
            sim.targets[row].append(
                (
                    part,
                    float(np.mean(x0[idx, g] > 0)),
                    float(np.mean(end[idx, g] > 0)),
                    change["scale"],
                    own,
                    change["n"],
                )
            )
    keep_genes_unchanged(sim, x0, keep, end)


def scale_bridges(sim: Simulation, idx: np.ndarray, factor: float) -> None:
    """Scale the spread of the bridges' cells ``idx`` (one condition) in place
    (`spread.scale`); a trajectory moves to the new endpoint along its path."""
    if factor == 1.0:
        return
    old = sim.prediction[idx]
    new = spread.scale(old, factor)
    sim.prediction[idx] = new
    sim.x1_hat[idx] = np.where(new > 0, new, sim.x1_hat[idx])
    if sim.x_path is not None:
        t = np.asarray(sim.t, dtype=np.float32)[:, None, None]
        sim.x_path[:, idx] = sim.x_path[:, idx] + t * (new - old)[None]


def transfer_genes(
    sim: Simulation, fractions: dict, groups: dict, x0, end, seed: int, sources=None
) -> None:
    """A perturbation trained only in other cell types: each gene keeps its predicted change
    in a share of the cells that grows with how far the change (predicted, and expected
    from the cell type's controls) stands out of the between-cell-type variance of its
    trained response and of the sampling noise of the prediction, and that the model's
    error for a new cell type leaves it (`transfer.weight`); in the other cells the gene
    keeps its unperturbed value (``end``, as a non-responder's). ``sources`` (the control
    cell of each row) counts the distinct control cells behind the control mean."""
    fits = fractions.get("transfer") or {}
    rng = np.random.default_rng([int(seed), 2])
    sim.transferred = {}
    for row, idx in groups.items():
        perturbation, cell_type, dose = row
        fit = fits.get(transfer.key(perturbation, dose))
        if fit is None or cell_type in fit["cell_types"]:
            continue
        idx = np.asarray(idx)
        start, predicted = x0[idx], sim.prediction[idx]
        control_mean = start.mean(0)
        change = predicted.mean(0) - control_mean
        expected = transfer.expected_change(fit, control_mean)
        n_sources = len(idx) if sources is None else len(np.unique(sources[idx]))
        noise = predicted.var(0) / len(idx) + start.var(0) / n_sources
        weight = transfer.weight(
            change, fit["variance"], expected, noise=noise, identity=fit.get("identity")
        )
        keep = np.zeros(sim.prediction.shape, dtype=bool)
        keep[idx] = rng.random((len(idx), len(weight))) >= weight
        keep_genes_unchanged(sim, x0, keep, end)
        sim.transferred[row] = float(weight.mean())
