"""The field's strongest simple baselines (DESIGN §3): *additive*, *linear* and *nearest*.

Each learns only from ``data.train_conditions()`` (its control cells, and the perturbed cells
of the training conditions); a held-out condition contributes its control cells and name.
The settings (``alpha``, ``prior``) are chosen on the validation perturbations by `tune`.
After Ahlmann-Eltze et al. 2025 (Nat Methods), PerturBench and Systema (2025).
"""

from __future__ import annotations

import inspect
import itertools
import zlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from .data import Condition, PerturbationData, tokens_of

Predictor = Callable[[Condition], np.ndarray]  # as `evaluate.Predictor` (no import: a cycle)
MIN_PERTURBATIONS = 3  # a cell type with fewer training perturbations joins the pooled fit
N_RESPONSE_PCS = 5


class _Shifts:
    """Mean shifts (mean perturbed - mean control) of the training conditions, averaged over
    doses, per ``(perturbation, cell_type)``; and the part-wise estimates read off them."""

    def __init__(self, data: PerturbationData):
        sums: dict[tuple[str, str], list[np.ndarray]] = {}
        for c in data.train_conditions():
            shift = data.x.mean(c.perturbed) - data.x.mean(c.control)
            sums.setdefault((c.perturbation, c.cell_type), []).append(shift)
        self.shift = {k: np.mean(v, axis=0) for k, v in sums.items()}
        self.control = data.control
        self.n_genes = data.x.shape[1]

    def cell_type_mean(self, cell_type: str) -> np.ndarray:
        """Mean training shift of ``cell_type`` (of all training conditions when it has none)."""
        same = [s for (_, ct), s in self.shift.items() if ct == cell_type]
        return np.mean(same or list(self.shift.values()), axis=0)

    def single(self, part: str, cell_type: str, exclude=None) -> tuple[np.ndarray | None, str]:
        """``part`` trained as a single in ``cell_type``, else in the other cell types."""
        if (part, cell_type) in self.shift and (part, cell_type) != exclude:
            return self.shift[part, cell_type], "single"
        other = [s for (p, ct), s in self.shift.items() if p == part and (p, ct) != exclude]
        return (np.mean(other, axis=0), "single_other_cell_type") if other else (None, "none")

    def part(self, part: str, cell_type: str, exclude=None) -> tuple[np.ndarray | None, str]:
        """Fallback order: `single`; else the part's share of trained combinations containing
        it (combination shift minus the other parts' `single` shifts; those of ``cell_type``
        when there are any, else of all cell types), averaged; else ``None``."""
        if part == self.control:
            return np.zeros(self.n_genes), "control"
        shift, source = self.single(part, cell_type, exclude)
        if shift is not None:
            return shift, source
        shares: dict[bool, list[np.ndarray]] = {True: [], False: []}
        for (p, ct), s in self.shift.items():
            parts = tokens_of(p)
            if part not in parts or len(parts) < 2 or (p, ct) == exclude:
                continue
            others = [
                self.single(q, ct, exclude)[0] for q in parts if q not in (part, self.control)
            ]
            if all(o is not None for o in others):
                shares[ct == cell_type].append(s - np.sum(others, axis=0) if others else s)
        best = shares[True] or shares[False]
        return (np.mean(best, axis=0), "combination") if best else (None, "none")

    def estimate(self, perturbation: str, cell_type: str, exclude=None):
        """``(sum of the parts' shifts, parts without an estimate)``; ``None`` when no part
        of the perturbation has one (then nothing about it was trained)."""
        parts = [p for p in tokens_of(perturbation) if p != self.control] or [perturbation]
        known = [self.part(p, cell_type, exclude) for p in parts]
        missing = [p for p, (s, _) in zip(parts, known, strict=True) if s is None]
        if len(missing) == len(parts):
            return None, missing
        return np.sum([s for s, _ in known if s is not None], axis=0), missing


class AdditivePredictor:
    """Controls + the summed mean shifts of a perturbation's parts (see `additive_predictor`).
    ``missing[(perturbation, cell_type)]`` lists the parts that had no estimate (counted 0)."""

    def __init__(self, data: PerturbationData):
        self.data, self.shifts = data, _Shifts(data)
        self.missing: dict[tuple[str, str], list[str]] = {}

    def shift(self, cond: Condition) -> np.ndarray:
        """The predicted mean change, shape (n_genes,)."""
        parts = tokens_of(cond.perturbation)
        if len(parts) < 2:  # a single: its own shift elsewhere, else like mean_shift
            own, _ = self.shifts.single(cond.perturbation, cond.cell_type)
            return own if own is not None else self.shifts.cell_type_mean(cond.cell_type)
        total, missing = self.shifts.estimate(cond.perturbation, cond.cell_type)
        if missing:
            self.missing[cond.perturbation, cond.cell_type] = missing
        # nothing about it was trained: the cell type's mean training shift, as for a single
        return total if total is not None else self.shifts.cell_type_mean(cond.cell_type)

    def __call__(self, cond: Condition) -> np.ndarray:
        cells = self.data.x[cond.control] + self.shift(cond)
        return np.maximum(cells, 0.0).astype(np.float32)


def additive_predictor(data: PerturbationData) -> AdditivePredictor:
    """Additive baseline: a combination ``A+B`` is its controls + shift(A) + shift(B).

    A part's shift is, in this order: its single's mean shift (mean perturbed - mean control)
    in the same cell type; its single's mean shift in the other cell types (averaged); its
    share of a trained combination containing it (combination shift minus the other parts'
    single shifts, combinations of the same cell type first); else 0, and the part is
    recorded in ``predictor.missing``; a combination none of whose parts has an estimate
    gets the cell type's mean training shift. Control tokens count 0. A single perturbation gets its
    own shift where it was trained in another cell type, else the cell type's mean training
    shift (as `evaluate.mean_shift_predictor`). Each gene of each cell is floored at 0.
    No settings: nothing to tune.
    """
    return AdditivePredictor(data)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Dual ridge weights ``(x x' + alpha I)^-1 y``: predict ``x_new @ x.T @ weights``
    (few training perturbations, possibly many features)."""
    gram = x @ x.T + max(alpha, 1e-12) * np.eye(len(x))
    return np.linalg.solve(gram, y)


class _LinearFit:
    """One ridge fit of the residual change (observed - prior) of a set of training
    conditions; the prior is a condition's additive estimate (without itself), else the cell
    type's mean training change, which is thus the intercept."""

    def __init__(self, shifts: _Shifts, keys, features, alpha: float, offsets):
        self.shifts, self.offsets = shifts, offsets
        y = np.stack([shifts.shift[k] for k in keys])
        prior = np.stack([self.prior(p, ct, exclude=(p, ct)) for p, ct in keys])
        f = features([p for p, _ in keys])
        self.mu, self.sd = f.mean(0), f.std(0)
        centred = y - np.stack([offsets[ct] for _, ct in keys])
        _, _, vt = np.linalg.svd(centred - centred.mean(0), full_matrices=False)
        self.pcs = vt[: min(N_RESPONSE_PCS, len(keys) - 1)]
        r = self._response(prior, [ct for _, ct in keys])
        self.rms = np.sqrt((r**2).mean(0))
        self.x = self._design(f, r)
        self.weights = _ridge(self.x, y - prior, alpha)

    def prior(self, perturbation: str, cell_type: str, exclude=None) -> np.ndarray:
        if len(tokens_of(perturbation)) < 2:
            own, _ = self.shifts.single(perturbation, cell_type, exclude)
            return own if own is not None else self.offsets[cell_type]
        total, _ = self.shifts.estimate(perturbation, cell_type, exclude)
        return total if total is not None else self.offsets[cell_type]

    def _response(self, prior: np.ndarray, cell_types) -> np.ndarray:
        # 0 where nothing was known (prior = offset), so that row carries no response signal
        off = np.stack([self.offsets[ct] for ct in cell_types])
        return (prior - off) @ self.pcs.T

    def _design(self, f: np.ndarray, r: np.ndarray) -> np.ndarray:
        scale = np.where(self.sd > 0, self.sd, np.inf)
        rms = np.where(self.rms > 0, self.rms, np.inf)
        return np.hstack([(f - self.mu) / scale, r / rms])

    def change(self, perturbation: str, cell_type: str, f: np.ndarray) -> np.ndarray:
        prior = self.prior(perturbation, cell_type)
        x = self._design(f, self._response(prior[None], [cell_type]))
        return prior + (x @ self.x.T @ self.weights)[0]


class LinearPredictor:
    """Ridge from perturbation features to the mean change (see `linear_predictor`)."""

    def __init__(self, data: PerturbationData, features, alpha: float):
        self.data, self.shifts = data, _Shifts(data)
        self._features = features
        self._cache: dict[str, np.ndarray] = {}
        keys = sorted(self.shifts.shift)
        offsets = {ct: self.shifts.cell_type_mean(ct) for ct in data.cell_types}
        self.fits: dict[str, _LinearFit] = {}
        counts = {ct: sum(k[1] == ct for k in keys) for ct in data.cell_types}
        for ct, n in counts.items():
            if n >= MIN_PERTURBATIONS:
                own = [k for k in keys if k[1] == ct]
                self.fits[ct] = _LinearFit(self.shifts, own, self.features, alpha, offsets)
        self.pooled = _LinearFit(self.shifts, keys, self.features, alpha, offsets)

    def features(self, perturbations: list[str]) -> np.ndarray:
        new = [p for p in dict.fromkeys(perturbations) if p not in self._cache]
        if new:
            f = np.asarray(self._features(new), dtype=np.float64).reshape(len(new), -1)
            self._cache.update(zip(new, f, strict=True))
        return np.stack([self._cache[p] for p in perturbations])

    def change(self, cond: Condition) -> np.ndarray:
        """The predicted mean change, shape (n_genes,)."""
        fit = self.fits.get(cond.cell_type, self.pooled)
        return fit.change(cond.perturbation, cond.cell_type, self.features([cond.perturbation]))

    def __call__(self, cond: Condition) -> np.ndarray:
        ctrl = self.data.x[cond.control]
        cells = np.where(ctrl > 0, ctrl + self.change(cond), 0.0)
        return np.maximum(cells, 0.0).astype(np.float32)


def linear_predictor(
    data: PerturbationData, features: Callable[[list[str]], np.ndarray], *, alpha: float = 1.0
) -> LinearPredictor:
    """Linear baseline (after Ahlmann-Eltze et al. 2025): ridge regression from perturbation
    features to the mean change per gene.

    Design matrix, one row per training condition: ``features(perturbations)`` (n, d),
    standardised on the training perturbations (a constant column is dropped); and the
    perturbation's *response features*: its additive estimate from the other training
    conditions (`additive_predictor`'s fallback order, the condition itself left out; a
    single's own shift in another cell type), minus the cell type's mean training change,
    projected on the first 5 PCs of the training changes and scaled to unit RMS (0 where no
    part was trained). The ridge fits the residual: observed change - prior, where the prior
    is that additive estimate when a part was trained, else the cell type's mean training
    change (the intercept). So with no informative features and nothing trained the
    prediction is the mean training change; with a trained part it is the additive estimate
    plus what the features explain of the additive residuals. One fit per cell type with at
    least 3 training perturbations, else a pooled fit whose targets are offset by each cell
    type's mean training change.

    Cells: controls + the predicted change on each cell's non-zero genes only; zeros stay
    zero (genes a cell does not express, and genes the controls never express, stay off, as
    in the data), floored at 0; so a gene's mean change is its active fraction x the change.
    ``alpha`` (ridge penalty on the standardised features) is chosen on the validation
    perturbations with `tune` (``GRIDS["linear"]``).
    """
    return LinearPredictor(data, features, alpha)


def _stable_seed(cond: Condition, seed: int) -> np.random.Generator:
    name = f"{cond.perturbation}\x1f{cond.cell_type}\x1f{cond.dose!r}"
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


class NearestPredictor:
    """Training perturbations' cells weighted by similarity (see `nearest_predictor`)."""

    def __init__(self, data: PerturbationData, similarity, prior, max_cells, seed):
        self.data, self.similarity = data, similarity
        self.prior, self.max_cells, self.seed = prior, max_cells, seed
        self.cells: dict[str, dict[str, np.ndarray]] = {}  # cell type -> perturbation -> rows
        for c in data.train_conditions():
            per = self.cells.setdefault(c.cell_type, {})
            before = per.get(c.perturbation, np.empty(0, dtype=int))
            per[c.perturbation] = np.concatenate([before, np.asarray(c.perturbed, dtype=int)])
        everyone: dict[str, list] = {}
        for per in self.cells.values():
            for p, rows in per.items():
                everyone.setdefault(p, []).append(rows)
        self.everyone = {p: np.concatenate(v) for p, v in everyone.items()}

    def pool(self, cond: Condition) -> dict[str, np.ndarray]:
        return self.cells.get(cond.cell_type) or self.everyone

    def weights(self, cond: Condition) -> tuple[list[str], np.ndarray]:
        """The training perturbations of the pool and their weights (sum 1)."""
        names = sorted(self.pool(cond))
        s = np.clip(np.asarray(self.similarity(cond.perturbation, names), float), 0, None)
        uniform = np.full(len(names), 1.0 / len(names))
        if not np.isfinite(s).all() or s.sum() <= 0:
            return names, uniform
        return names, (1 - self.prior) * s / s.sum() + self.prior * uniform

    def __call__(self, cond: Condition) -> np.ndarray:
        names, w = self.weights(cond)
        rng = _stable_seed(cond, self.seed)
        n = min(len(cond.control), self.max_cells)
        counts = rng.multinomial(n, w / w.sum())
        pool = self.pool(cond)
        if n == 0:
            return np.zeros((0, self.data.x.shape[1]), dtype=np.float32)
        rows = [
            rng.choice(pool[p], k, replace=k > len(pool[p]))
            for p, k in zip(names, counts, strict=True)
            if k
        ]
        rows = np.concatenate(rows)
        return self.data.x[rows[rng.permutation(len(rows))]]


def nearest_predictor(
    data: PerturbationData,
    similarity: Callable[[str, list[str]], np.ndarray],
    *,
    prior: float = 0.1,
    max_cells: int = 2000,
    seed: int = 0,
) -> NearestPredictor:
    """Nearest baseline: observed cells of the training perturbations of the same cell type
    (of all cell types when it has none), perturbation k weighted by
    ``(1 - prior) * s_k / sum(s) + prior / K`` with ``s = similarity(new, training) >= 0``
    (uniform when all s are 0). As many cells as the condition has control cells (at most
    ``max_cells``): per cell a perturbation by the weights, then one of its cells (without
    replacement while it has enough). Seeded by ``seed`` and a CRC-32 of the condition's
    perturbation, cell type and dose: the same condition gives the same cells in any process.
    ``prior`` is chosen on the validation perturbations with `tune` (``GRIDS["nearest"]``).
    """
    return NearestPredictor(data, similarity, prior, max_cells, seed)


GRIDS = {"linear": {"alpha": (0.1, 1.0, 10.0, 100.0)}, "nearest": {"prior": (0.0, 0.1, 0.3, 1.0)}}
_FUNCTIONS = {"linear": linear_predictor, "nearest": nearest_predictor}


def default_setting(name: str) -> dict:
    """The baseline's default values of the settings in its grid."""
    params = inspect.signature(_FUNCTIONS[name]).parameters
    return {k: params[k].default for k in GRIDS[name]}


def validation_conditions(data: PerturbationData) -> list[Condition]:
    """``data.validation_conditions()``; the conditions marked ``validation`` without it."""
    if hasattr(data, "validation_conditions"):
        return list(data.validation_conditions())
    return [c for c in data.conditions if getattr(c, "validation", False) and not c.held_out]


def tune(
    data: PerturbationData,
    name: str,
    make: Callable[..., Predictor],
    *,
    metric: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    grid: dict | None = None,
    min_cells: int = 10,
) -> tuple[dict, pd.DataFrame]:
    """Choose a baseline's settings on the validation perturbations.

    For every setting of ``grid`` (default ``GRIDS[name]``; a product over its keys) build
    ``make(**setting)`` (learning from ``data.train_conditions()``, which exclude the
    validation conditions) and score each validation condition with at least ``min_cells``
    perturbed cells with ``metric(pred_cells, observed_cells, control_cells)`` (lower is
    better). Returns the setting with the lowest median (the first one on a tie) and the
    table of medians (columns: the settings, ``median``, ``n``). Without validation
    conditions: the baseline's default setting and an empty table.
    """
    grid = GRIDS[name] if grid is None else grid
    conds = [c for c in validation_conditions(data) if len(c.perturbed) >= min_cells]
    if not conds:
        return default_setting(name), pd.DataFrame(columns=[*grid, "median", "n"])
    rows = []
    settings = [dict(zip(grid, v, strict=True)) for v in itertools.product(*grid.values())]
    for setting in settings:
        predict = make(**setting)
        scores = []
        for c in conds:
            pred = predict(c)
            cells = getattr(pred, "cells", pred)  # `evaluate.Predicted`
            scores.append(metric(cells, data.x[c.perturbed], data.x[c.control]))
        finite = [s for s in scores if s is not None and np.isfinite(s)]
        median = float(np.median(finite)) if finite else np.nan
        rows.append({**setting, "median": median, "n": len(finite)})
    table = pd.DataFrame(rows)
    if table["median"].isna().all():
        return default_setting(name), table
    return settings[int(np.nanargmin(table["median"].to_numpy()))], table
