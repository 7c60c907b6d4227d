"""A perturbation in a cell type it was not trained in: which of its changes carry over.

Fitted with the non-responders (`calibration.fit_unaffected`, stored in ``responders.json``
as ``"transfer"``) and applied when sampling (`responders.transfer_genes`).
"""

from __future__ import annotations

import numpy as np

from .data import Condition, PerturbationData

# A perturbation trained in some cell types and predicted for another (a held-out cell type,
# patient or donor): how far can its trained response be carried over, gene by gene? Across
# the cell types it was trained in, each gene's mean change is regressed on that cell type's
# control mean; what the controls do not explain is the between-cell-type variance that a
# new cell type's change carries on top of anything the model can read off its controls.
# A change is kept in proportion to how far the evidence for it stands out of that variance
# and of the noise of the model's estimate: ``(change^2 + expected^2) / (change^2 +
# expected^2 + variance + noise)``, the shrinkage of a normal prior towards no change, with
# two witnesses of the change, the model's prediction and what the regression expects from
# the new cell type's controls. The model's own change is then trusted only as far as its
# error for a cell type it never saw allows (`posterior_ratio`): that error is largest along
# the genes in which the cell types differ (it can mistake a new cell type for a trained
# one: CD4 T cells given the cytotoxic genes of the CD8 T cells), and how large it is is read
# off how far the model's changes stray from the expected ones beyond the prior's variance.
# Elsewhere the cell keeps its unperturbed value.
MIN_CELL_TYPES = 3  # the regression has two parameters: at least one degree left
PRIOR_DOF = 4  # degrees of freedom of the genes' common variance in the moderated estimate


def key(perturbation: str, dose: float) -> str:
    return f"{perturbation}|{dose:g}"


def fit(data: PerturbationData) -> dict:
    """Per perturbation (and dose) trained in `MIN_CELL_TYPES` cell types or more,
    per gene, the least-squares line of its mean change on the control mean across those
    cell types (``"base"`` and ``"change"``, their means; ``"slope"``), the variance it
    leaves unexplained (``"variance"``), moderated towards the median over genes with
    `PRIOR_DOF` degrees of freedom (as limma moderates gene variances): with 3-6 cell types
    each gene's own estimate rests on 1-4 degrees of freedom, and the variance of the control
    mean across those cell types (``"identity"``: how much the cell types differ)."""
    groups: dict[str, list[Condition]] = {}
    for cond in data.train_conditions():
        if len(cond.perturbed) and len(cond.control):
            groups.setdefault(key(cond.perturbation, cond.dose), []).append(cond)
    out = {}
    for name, conds in groups.items():
        if len({c.cell_type for c in conds}) < MIN_CELL_TYPES:
            continue
        base = np.stack([data.x.mean(c.control) for c in conds]).astype(np.float64)
        change = np.stack([data.x.mean(c.perturbed) for c in conds]) - base
        base_c, change_c = base - base.mean(0), change - change.mean(0)
        slope = (base_c * change_c).sum(0) / np.maximum((base_c**2).sum(0), 1e-12)
        dof = len(conds) - 2
        residual = ((change_c - slope * base_c) ** 2).sum(0) / dof
        moderated = (dof * residual + PRIOR_DOF * np.median(residual)) / (dof + PRIOR_DOF)
        out[name] = {
            "cell_types": sorted({c.cell_type for c in conds}),
            "variance": np.round(moderated, 8).tolist(),
            "identity": np.round((base_c**2).sum(0) / (len(conds) - 1), 8).tolist(),
            "slope": np.round(slope, 6).tolist(),
            "base": np.round(base.mean(0), 6).tolist(),
            "change": np.round(change.mean(0), 6).tolist(),
        }
    return out


def expected_change(fit: dict, control_mean: np.ndarray) -> np.ndarray:
    """Per gene, the mean change the `fit` line expects of a cell type whose
    control mean is ``control_mean``."""
    slope, base = np.asarray(fit["slope"]), np.asarray(fit["base"])
    return np.asarray(fit["change"]) + slope * (np.asarray(control_mean, np.float64) - base)


def weight(change, variance, expected=0.0, noise=0.0, identity=None) -> np.ndarray:
    """Per gene, the share of cells that keep a predicted mean ``change``, given the
    between-cell-type ``variance`` of `fit`, the change it ``expected`` and the sampling
    ``noise`` (variance) of ``change``: ``(change^2 + expected^2) / (change^2 + expected^2 +
    variance + noise)``, times `posterior_ratio` when the cell types' ``identity`` variance
    is given."""
    change = np.asarray(change, dtype=np.float64)
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), change.shape)
    variance = np.asarray(variance, dtype=np.float64)
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), change.shape)
    evidence = change**2 + expected**2
    keep = evidence / np.maximum(evidence + variance + noise, 1e-12)
    if identity is None:
        return keep
    return keep * posterior_ratio(change, variance, expected, noise, identity)


def model_error(change, variance, expected, noise, identity) -> float:
    """The scale ``lam`` of the model's error for a cell type it was not trained in, taken to
    be ``lam * identity`` per gene on top of the sampling ``noise``: by the method of moments
    over genes, the model's changes stray from the ``expected`` ones by ``variance + noise +
    lam * identity`` on average (0 where they stray no more than the prior and the noise
    allow)."""
    identity = np.asarray(identity, dtype=np.float64)
    if identity.sum() <= 0:
        return 0.0
    excess = ((change - expected) ** 2 - variance - noise).sum()
    return max(0.0, float(excess / identity.sum()))


def posterior_ratio(change, variance, expected, noise, identity) -> np.ndarray:
    """Per gene, the posterior mean of the true change over the model's ``change`` (clipped to
    [0, 1]): with the prior ``N(expected, variance)`` of the trained cell types and the model's
    change observed with error ``noise + lam * identity`` (`model_error`), the posterior mean
    is ``expected + variance / (variance + error) * (change - expected)``."""
    change = np.asarray(change, dtype=np.float64)
    lam = model_error(change, variance, expected, noise, identity)
    error = noise + lam * np.asarray(identity, dtype=np.float64)
    trust = variance / np.maximum(variance + error, 1e-12)
    posterior = expected + trust * (change - expected)
    ratio = np.divide(posterior, change, out=np.zeros_like(change), where=np.abs(change) > 1e-12)
    return np.clip(ratio, 0.0, 1.0)
