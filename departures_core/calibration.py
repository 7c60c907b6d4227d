"""The non-responders: how many cells of a condition the perturbation leaves unchanged, fitted
when training finishes (`fit_unaffected`, saved as ``responders.json`` by `responders`), and
where a condition the network never saw takes its share from (`unaffected_source`). The
in-distribution diagnostics (`calibrate`) are in `diagnostics`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import metrics, spread, targets, transfer
from .data import Condition, PerturbationData
from .diagnostics import (  # noqa: F401  (their home before the split; callers import them here)
    COLUMNS,
    NULL_EFFECT,
    calibrate,
    condition_row,
    noise_floor,
    summarize,
    variance_ratio,
)


# ----------------------------------------------------------------- responders and non-responders
def _mean_distance(x: np.ndarray, y: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between the rows of ``x`` and ``y`` (``y`` None: distinct pairs
    of rows of ``x``)."""
    same = y is None
    y = x if same else y
    (total,) = metrics._block_sums(x, y, [np.sqrt], same=same)
    pairs = len(x) * (len(x) - 1) if same else len(x) * len(y)
    return float(total / max(pairs, 1))


def unaffected_fraction(pred: np.ndarray, ctrl: np.ndarray, obs: np.ndarray) -> float:
    """The fraction ``w`` of cells left unchanged that brings ``w ctrl + (1 - w) pred`` closest
    to ``obs`` in energy distance; in [0, 1].

    The squared energy distance of the mixture is a quadratic in ``w``; its minimum is
    ``(D_py - D_cy + D_pc - D_pp) / (2 D_pc - D_pp - D_cc)`` with ``D`` the mean distances
    between (and within) predicted ``p``, control ``c`` and observed ``y`` cells.
    """
    pred, ctrl, obs = (np.asarray(a, dtype=np.float64) for a in (pred, ctrl, obs))
    centre = obs.mean(0)
    pred, ctrl, obs = pred - centre, ctrl - centre, obs - centre
    d_py, d_cy, d_pc = (
        _mean_distance(pred, obs),
        _mean_distance(ctrl, obs),
        _mean_distance(pred, ctrl),
    )
    d_pp, d_cc = _mean_distance(pred), _mean_distance(ctrl)
    curvature = 2 * d_pc - d_pp - d_cc  # the energy distance of pred and ctrl, squared
    if curvature <= 1e-12:
        return 0.0
    return float(np.clip((d_py - d_cy + d_pc - d_pp) / curvature, 0.0, 1.0))


# Held-out conditions: the unaffected fraction is the mean over the training conditions
# whose predicted effect (energy distance of the bridges' cells from their control cells)
# is nearest in log scale - sqrt(n) of them, at least 3: a fixed kernel width let the many
# small-effect conditions of a screen outweigh the few strong ones.
MIN_EFFECT_CELLS = 20  # fewer simulated cells give too noisy an effect size
EFFECT_CELLS = 200  # cells of a simulation used to measure its effect size
SPREAD_CONDITIONS = 32  # training conditions per cell type that measure its spread (`spread`)


def predicted_effect(pred: np.ndarray, ctrl: np.ndarray) -> float | None:
    """Energy distance of the bridges' cells ``pred`` from the control cells they started
    from, on at most `EFFECT_CELLS` of them; None below `MIN_EFFECT_CELLS` cells."""
    if len(pred) < MIN_EFFECT_CELLS:
        return None
    rows = np.linspace(0, len(pred) - 1, min(len(pred), EFFECT_CELLS)).round().astype(int)
    return metrics.e_distance(pred[rows], ctrl[rows])


def fit_unaffected(
    data: PerturbationData,
    simulate_condition: Callable[[Condition, np.ndarray], np.ndarray],
    *,
    observed: dict | None = None,
    min_cells: int = 10,
    max_cells: int = EFFECT_CELLS,
    seed: int = 0,
) -> dict:
    """Estimate, per training condition, the fraction of cells the perturbation leaves unchanged.

    Many cells of a perturbation screen do not respond (an incomplete knock-out, a drug that
    misses a cell: Mixscape's "non-perturbed" cells), and a perturbation that changes nothing
    is the extreme case. The bridges model the responders; this fraction, fitted by energy
    distance on each training condition (`unaffected_fraction`), gives the rest.
    ``simulate_condition(condition, control_rows)`` returns the bridges' prediction from
    those control rows. ``observed`` maps ``(perturbation, cell_type, dose)`` to the rows to
    compare with - the validation cells, which the bridges were not trained on (a bridge
    that memorised its training cells matches them too well for an honest estimate); only
    those conditions are fitted then.

    With each fraction goes the bridges' predicted effect on that condition
    (`predicted_effect`): a condition without its own estimate (held out) takes the
    fraction of the training conditions with a similar predicted effect
    (`unaffected_for`). A perturbation the bridges predict to change cells strongly gets
    few unchanged cells, one they barely move is treated like the training perturbations
    that changed little.

    The unchanged cells are not quite the control cells: whatever every perturbed cell of a
    cell type shares (transduction, selection, its own batch) moves them too. ``"shift"``
    holds, per cell type, the shift of their active genes that makes the mixture's mean
    match the observed cells over its training conditions (`shift_terms`: all their perturbed
    cells, not only the validation cells, measure this mean); only for a cell
    type with `MIN_SHIFT_CONDITIONS` training conditions or more (with one, a shared shift
    cannot be told from that perturbation's own effect).
    """
    rng = np.random.default_rng(seed)
    per_condition = {}
    shift_sums: dict[str, list] = {}
    chosen, ratios = [], {}
    for cond in data.train_conditions():
        if len(cond.perturbed) < min_cells or len(cond.control) < 2:
            continue
        if observed is not None:
            obs = observed.get((cond.perturbation, cond.cell_type, cond.dose))
            if obs is None or len(obs) < min_cells // 2:
                continue
        else:
            obs = cond.perturbed
        rows = cond.control
        if len(rows) > max_cells:
            rows = np.sort(rng.choice(rows, max_cells, replace=False))
        if len(obs) > max_cells:
            obs = np.sort(rng.choice(obs, max_cells, replace=False))
        chosen.append((cond, rows, obs))
    # the spread is measured on the first `SPREAD_CONDITIONS` conditions of each cell type,
    # whose simulations are kept for the fit below: each condition is simulated once, and a
    # screen of thousands of perturbations does not hold all of them in memory
    kept: dict[int, np.ndarray] = {}
    for i, (cond, rows, obs) in enumerate(chosen):
        if len(ratios.get(cond.cell_type, ())) < SPREAD_CONDITIONS:
            kept[i] = simulate_condition(cond, rows)
            ratios.setdefault(cond.cell_type, []).append(spread.ratios(kept[i], data.x[obs]))
    factors = spread.fit(ratios)
    for i, (cond, rows, obs) in enumerate(chosen):
        pred = kept.pop(i) if i in kept else simulate_condition(cond, rows)
        pred = spread.scale(pred, spread.factor_for(factors, cond.cell_type))
        ctrl, obs_x = data.x[rows], data.x[obs]
        w = unaffected_fraction(pred, ctrl, obs_x)
        per_condition[condition_key(cond.perturbation, cond.cell_type, cond.dose)] = (
            cond.cell_type,
            w,
            predicted_effect(pred, ctrl),
        )
        if w > 0:
            # the shift is a mean: every perturbed cell of the condition measures it (the
            # validation cells alone leave it too noisy where a condition has few cells)
            every = obs_x
            if observed is not None:
                rows_all = cond.perturbed
                if len(rows_all) > max_cells:
                    rows_all = np.sort(rng.choice(rows_all, max_cells, replace=False))
                every = data.x[rows_all]
            num, den = shift_terms(w, pred, ctrl, every)
            sums = shift_sums.setdefault(cond.cell_type, [0.0, 0.0, 0])
            sums[0], sums[1], sums[2] = sums[0] + num, sums[1] + den, sums[2] + 1
    by_type: dict[str, list[float]] = {}
    for cell_type, w, _ in per_condition.values():
        by_type.setdefault(cell_type, []).append(w)
    values = [w for _, w, _ in per_condition.values()]
    shifts = {
        ct: solve_shift(num, den)
        for ct, (num, den, n) in shift_sums.items()
        if n >= MIN_SHIFT_CONDITIONS
    }
    fitted = {
        "condition": {k: w for k, (_, w, _) in per_condition.items()},
        "effect": {k: s for k, (_, _, s) in per_condition.items() if s is not None},
        "cell_type": {ct: float(np.median(ws)) for ct, ws in by_type.items()},
        "overall": float(np.median(values)) if values else 0.0,
        "shift": {ct: np.round(v, 5).tolist() for ct, v in shifts.items()},
        "transfer": transfer.fit(data),
        "target": targets.fit(data),
        "spread": factors,
    }
    unseen = fit_unseen(data, simulate_condition, min_cells=min_cells, max_cells=max_cells, rng=rng)
    if unseen is not None:
        fitted["unseen"] = unseen
    return fitted


def fit_unseen(
    data: PerturbationData,
    simulate_condition: Callable[[Condition, np.ndarray], np.ndarray],
    *,
    min_cells: int = 10,
    max_cells: int = EFFECT_CELLS,
    rng: np.random.Generator,
) -> dict | None:
    """The non-responders' fraction and the bridges' spread of the validation conditions:
    training perturbations (or cell types) the network was not trained on, so that a
    perturbation it never saw is predicted the way these unseen ones fitted, not the way
    trained ones (whose bridges fit their own cells) did. Same estimates as the training
    conditions' (`unaffected_fraction`, `spread.ratios`), on all their observed cells.
    None when the run has no validation conditions."""
    chosen = []
    for cond in data.validation_conditions():
        if len(cond.perturbed) < min_cells or len(cond.control) < 2:
            continue
        rows, obs = cond.control, cond.perturbed
        if len(rows) > max_cells:
            rows = np.sort(rng.choice(rows, max_cells, replace=False))
        if len(obs) > max_cells:
            obs = np.sort(rng.choice(obs, max_cells, replace=False))
        chosen.append((cond, rows, obs, simulate_condition(cond, rows)))
    if not chosen:
        return None
    ratios: dict[str, list] = {}
    for cond, _, obs, pred in chosen:
        ratios.setdefault(cond.cell_type, []).append(spread.ratios(pred, data.x[obs]))
    factors = spread.fit(ratios)
    fractions, effects = {}, {}
    for cond, rows, obs, pred in chosen:
        pred = spread.scale(pred, spread.factor_for(factors, cond.cell_type))
        ctrl = data.x[rows]
        key = condition_key(cond.perturbation, cond.cell_type, cond.dose)
        fractions[key] = unaffected_fraction(pred, ctrl, data.x[obs])
        effect = predicted_effect(pred, ctrl)
        if effect is not None:
            effects[key] = effect
    return {"condition": fractions, "effect": effects, "spread": factors}


# The cells that do not respond still differ from the control cells in what every perturbed
# cell of the screen shares (transduction, selection, a batch of their own): the fit takes
# it as the shift of their active genes that makes the mixture's mean per gene match the
# observed one over the cell type's training conditions (weighted least squares), shrunk
# towards 0 where the data hardly constrain it (empirical Bayes over genes).
MIN_SHIFT_CONDITIONS = 3  # fewer perturbations cannot tell a shared shift from their own effects


def shift_terms(w: float, pred, ctrl, obs) -> tuple[np.ndarray, np.ndarray]:
    """One training condition's terms of the non-responders' shift (sum them over the cell
    type's conditions, then `solve_shift`): with a fraction ``w`` of cells unchanged, the
    mixture ``w (ctrl + shift on active genes) + (1 - w) pred`` has the mean
    ``w (c + f shift) + (1 - w) p`` per gene, ``f`` the controls' active fraction; the
    residual of the observed mean is weighted by the inverse of its sampling variance."""
    pred, ctrl, obs = (np.asarray(m, dtype=np.float64) for m in (pred, ctrl, obs))
    a = w * (ctrl > 0).mean(0)
    residual = obs.mean(0) - (1 - w) * pred.mean(0) - w * ctrl.mean(0)
    # the sampling variance of the residual, from the control cells' spread: a variance from
    # the observed cells would weight the conditions that lower a gene's mean (less spread)
    # above those that raise it
    variance = ctrl.var(0) * (1 / len(obs) + (1 - w) ** 2 / len(pred) + w**2 / len(ctrl))
    weight = 1.0 / np.maximum(variance, 1e-8)
    return a * residual * weight, a * a * weight


def solve_shift(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """The shift from summed `shift_terms`: the weighted least-squares estimate per gene
    (variance ``1 / den``), shrunk by ``tau^2 / (tau^2 + variance)`` with ``tau^2`` the
    spread of the true shifts over genes (method of moments); 0 where nothing constrains it."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    known = den > 1e-12
    if not known.any():
        return np.zeros_like(num)
    estimate = np.where(known, num / np.where(known, den, 1.0), 0.0)
    variance = np.where(known, 1.0 / np.where(known, den, 1.0), np.inf)
    tau2 = max(float(np.mean(estimate[known] ** 2 - variance[known])), 0.0)
    return np.where(known, estimate * tau2 / (tau2 + variance), 0.0)


def shift_active(x: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    """Non-responding cells: their control cells ``x`` with ``shift`` added to the active
    genes (floored at 0); zeros stay zeros, so each keeps its control on/off state."""
    if shift is None:
        return x
    return np.where(x > 0, np.maximum(x + np.asarray(shift, dtype=x.dtype), 0), 0).astype(x.dtype)


def condition_key(perturbation: str, cell_type: str, dose: float) -> str:
    return f"{perturbation}|{cell_type}|{dose:g}"


def _cell_type_of(key: str) -> str:
    """The cell type of a `condition_key`."""
    return key.rsplit("|", 2)[1]


def _effect_neighbours(
    fractions: dict, cell_type: str | None, exclude: str | None = None
) -> tuple[list[str], bool]:
    """The conditions a held-out condition's fraction is read off (`unaffected_by_effect`),
    and whether they are its own cell type's: those with both a fraction and a predicted
    effect (but ``exclude``), of ``cell_type`` when it has 3 or more, else all."""
    effects = fractions.get("effect") or {}
    keys = [k for k in effects if k in fractions["condition"] and k != exclude]
    own = [k for k in keys if _cell_type_of(k) == cell_type]
    return (own, True) if len(own) >= 3 else (keys, False)


def unaffected_by_effect(
    fractions: dict,
    effect: float,
    cell_type: str | None = None,
    *,
    min_conditions: int = 3,
    exclude: str | None = None,
) -> tuple[float, bool] | None:
    """The mean unaffected fraction of the training conditions whose predicted effect is
    nearest ``effect`` in log scale (the nearest sqrt(n), at least 3), among those of
    ``cell_type`` when it has 3 or more (how many cells a perturbation leaves unchanged
    depends on the cell type: a CRISPRa line and three CRISPRi lines in the demo), else
    among all; and whether they were ``cell_type``'s. None with fewer than 3 training
    conditions to learn from (``min_conditions``)."""
    effects = fractions.get("effect") or {}
    keys, in_type = _effect_neighbours(fractions, cell_type, exclude)
    if len(keys) < max(1, min_conditions):
        return None
    known = np.log(np.maximum([effects[k] for k in keys], 1e-3))
    distance = np.abs(known - np.log(max(effect, 1e-3)))
    k = max(3, int(np.ceil(np.sqrt(len(keys)))))
    nearest = np.argsort(distance, kind="stable")[:k]
    return float(np.mean([fractions["condition"][keys[i]] for i in nearest])), in_type


def unaffected_for(
    fractions: dict | None,
    perturbation: str,
    cell_type: str,
    dose: float,
    effect: float | None = None,
) -> float:
    """The unaffected fraction of one condition from `fit_unaffected`'s result (0 when None).

    A training condition has its own. Any other takes the fraction of the training
    conditions (of its cell type, when it has enough) with a similar predicted ``effect``
    (`unaffected_by_effect`) when the effect is given, else the median of its cell type's
    training conditions, else of all.
    """
    return unaffected_source(fractions, perturbation, cell_type, dose, effect)[0]


def unaffected_source(
    fractions: dict | None,
    perturbation: str,
    cell_type: str,
    dose: float,
    effect: float | None = None,
) -> tuple[float, str]:
    """`unaffected_for` and a phrase saying where the fraction comes from."""
    if not fractions:
        return 0.0, "every cell responds"
    key = condition_key(perturbation, cell_type, dose)
    own = fractions["condition"].get(key)
    if own is not None:
        return float(own), "fitted on this training condition's observed cells"
    unseen = fractions.get("unseen")
    if unseen and effect is not None:  # never its own fit: a validation condition is scored
        found = unaffected_by_effect(unseen, effect, cell_type, min_conditions=1, exclude=key)
        if found is not None:
            w, in_type = found
            return w, (
                f"from the validation perturbations{f' in {cell_type}' if in_type else ''} "
                f"(left out of training, as this one was) with a predicted effect like this "
                f"one's (energy distance {effect:.2f} from the control cells)"
            )
    if effect is not None:
        found = unaffected_by_effect(fractions, effect, cell_type)
        if found is not None:
            w, in_type = found
            return w, (
                f"from the training conditions{f' in {cell_type}' if in_type else ''} with a "
                f"predicted effect like this one's (energy distance {effect:.2f} from the "
                f"control cells)"
            )
    if cell_type in fractions["cell_type"]:
        return float(fractions["cell_type"][cell_type]), (
            f"the median of the training perturbations in {cell_type}"
        )
    return float(fractions["overall"]), "the median of all training conditions"
