"""A perturbation's own gene, when it is measured and the perturbation was never trained.

A knock-out, a knock-down (CRISPRi) or an activation (CRISPRa) acts first on its target
gene. For a trained perturbation the network learns that change like any other; for one it
never saw, nothing ties the new perturbation to its gene's own output, so the target keeps
its control value. In the demo's K562 (CRISPRa), TMSB4X held out: observed 3.05 -> 5.24 on
average, predicted 3.09; trained, 5.2. What a screen does to its targets is consistent
(a knock-down lowers its gene, an activation raises it), so it is learned from the training
perturbations whose target is measured: how the share of cells expressing the target moves,
on the logit scale, and how its active values scale (medians over those perturbations).

Fitted with the non-responders (`calibration.fit_unaffected`, stored in ``responders.json``
as ``"target"``) and applied when sampling (`responders.draw`), to every predicted cell of
an untrained perturbation's condition, from that cell's control value of the target.
"""

from __future__ import annotations

import numpy as np

from .data import PerturbationData, tokens_of

MIN_TARGETS = 3  # training perturbations with a measured target needed to learn from
MIN_ACTIVE = 5  # cells expressing the target, in control and perturbed, to measure a scale


def gene_index(genes) -> dict[str, int]:
    """Column of each measured gene, for `measured_targets`."""
    return {g: i for i, g in enumerate(genes)}


def measured_targets(perturbation: str, index: dict[str, int]) -> list[tuple[str, int]]:
    """The parts of ``perturbation`` that are measured genes (``index``: `gene_index`),
    with their column."""
    return [(p, index[p]) for p in tokens_of(perturbation) if p in index]


def _share(on: np.ndarray) -> float:
    """The share of cells expressing a gene, kept half a cell away from 0 and 1."""
    n = len(on)
    return float(np.clip(on.mean(), 0.5 / n, 1 - 0.5 / n))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def change(control: np.ndarray, perturbed: np.ndarray) -> tuple[float, float]:
    """How a target gene's values ``perturbed`` differ from its ``control`` values: the
    change of the share of cells expressing it on the logit scale, and the ratio of its
    mean active values (nan with fewer than `MIN_ACTIVE` active cells in either)."""
    on0, on1 = control > 0, perturbed > 0
    logit = _logit(_share(on1)) - _logit(_share(on0))
    if on0.sum() < MIN_ACTIVE or on1.sum() < MIN_ACTIVE:
        return logit, float("nan")
    return logit, float(perturbed[on1].mean() / control[on0].mean())


def _summary(changes: list[tuple[float, float]]) -> dict:
    scales = [s for _, s in changes if np.isfinite(s)]
    return {
        "logit": float(np.median([c for c, _ in changes])),
        "scale": float(np.median(scales)) if scales else 1.0,
        "n": len(changes),
    }


def fit(data: PerturbationData) -> dict | None:
    """What the training perturbations do to their own measured gene, per cell type with
    `MIN_TARGETS` of them or more and over all (``"overall"``); None with fewer in all."""
    by_type: dict[str, list[tuple[float, float]]] = {}
    index = gene_index(data.genes)
    for cond in data.train_conditions():
        if len(cond.perturbed) == 0 or len(cond.control) == 0:
            continue
        for _, g in measured_targets(cond.perturbation, index):
            by_type.setdefault(cond.cell_type, []).append(
                change(data.x[cond.control, g], data.x[cond.perturbed, g])
            )
    every = [c for changes in by_type.values() for c in changes]
    if len(every) < MIN_TARGETS:
        return None
    return {
        "cell_type": {ct: _summary(c) for ct, c in by_type.items() if len(c) >= MIN_TARGETS},
        "overall": _summary(every),
    }


def for_cell_type(fitted: dict, cell_type: str) -> tuple[dict, bool]:
    """The change to apply in ``cell_type``, and whether it was measured there."""
    own = fitted["cell_type"].get(cell_type)
    return (own, True) if own is not None else (fitted["overall"], False)


def transform(control: np.ndarray, logit: float, scale: float, rng) -> np.ndarray:
    """A target gene's predicted values from its ``control`` values (one per cell): its
    active values scaled by ``scale``; the share of cells expressing it moved by ``logit``,
    by switching off active cells at random, or switching on inactive ones with values
    drawn from the scaled active ones."""
    control = np.asarray(control, dtype=np.float32)
    on = control > 0
    out = control * np.float32(scale)
    if not on.any():
        return out
    p0 = _share(on)
    p1 = 1.0 / (1.0 + np.exp(-(_logit(p0) + logit)))
    if p1 < p0:
        out[on & (rng.random(len(out)) >= p1 / p0)] = 0.0
    elif p1 > p0 and (~on).any():
        switch = ~on & (rng.random(len(out)) < (p1 - p0) / (1 - p0))
        out[switch] = rng.choice(out[on], int(switch.sum()))
    return out
