"""AnnData -> expression (sparse stays sparse) and per-condition cell indices; the split.
AnnData stops here."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp

from . import keys
from .config import DataConfig
from .errors import DataValidationError, SplitError


def tokens_of(perturbation: str) -> list[str]:
    """Perturbation label -> its parts: ``"A+B"`` -> ``["A", "B"]``."""
    return [t for t in str(perturbation).split(keys.COMBINATION_DELIMITER) if t]


def parse_dose(value) -> float:
    """A dose as a float; ``"1+1"`` (per-part doses of a combination) gives their mean."""
    try:
        parts = [float(p) for p in str(value).split(keys.COMBINATION_DELIMITER) if p != ""]
    except ValueError as exc:
        raise DataValidationError(
            f"Dose value {value!r} is not a number. Give numeric doses (e.g. 0.1, 1.0) or "
            "leave the dose column unset."
        ) from exc
    return float(np.mean(parts)) if parts else 0.0


@dataclass(frozen=True)
class Condition:
    """One perturbation in one cell type (at one dose): the unit of pairing and evaluation."""

    perturbation: str
    cell_type: str
    dose: float
    perturbed: np.ndarray  # row indices of the perturbed cells
    control: np.ndarray  # row indices of the control cells of the same cell type
    held_out: bool
    # a training perturbation (or cell type) kept out of the network's training: the
    # post-hoc fits for what the model never saw are made on it, never on held-out ones
    validation: bool = False


@dataclass(frozen=True)
class Split:
    """Perturbations used for training and held out; a condition is held out when its
    perturbation is, or when its cell type is in ``holdout_cell_types``. Of the training
    perturbations (cell types), ``validation`` (``validation_cell_types``) are kept out of
    the network's training: unseen like a held-out one, but never used for reporting."""

    train: tuple[str, ...]
    holdout: tuple[str, ...]
    holdout_cell_types: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    validation_cell_types: tuple[str, ...] = ()

    def is_held_out(self, perturbation: str, cell_type: str) -> bool:
        return perturbation in self.holdout or cell_type in self.holdout_cell_types

    def is_validation(self, perturbation: str, cell_type: str) -> bool:
        return not self.is_held_out(perturbation, cell_type) and (
            perturbation in self.validation or cell_type in self.validation_cell_types
        )

    @property
    def unseen_cell_types(self) -> tuple[str, ...]:
        """Cell types the network trains on no condition of."""
        return tuple(sorted({*self.holdout_cell_types, *self.validation_cell_types}))

    def to_dict(self) -> dict:
        d = {"train": list(self.train), "holdout": list(self.holdout)}
        for name in ("holdout_cell_types", "validation", "validation_cell_types"):
            if getattr(self, name):
                d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(
            tuple(d["train"]),
            tuple(d["holdout"]),
            tuple(d.get("holdout_cell_types", ())),
            tuple(d.get("validation", ())),
            tuple(d.get("validation_cell_types", ())),
        )


def make_split(
    perturbations: list[str], cell_types: list[str], cfg: DataConfig, *, seed: int
) -> Split:
    """Hold out the listed perturbations, or a seeded fraction of them; and listed cell types."""
    perturbations = sorted(perturbations)
    unknown = [p for p in cfg.holdout if p not in perturbations]
    if unknown:
        raise SplitError(
            f"Hold-out perturbation(s) not in the data: {', '.join(unknown)}. "
            f"Known: {', '.join(perturbations[:10])}{'...' if len(perturbations) > 10 else ''}."
        )
    bad_ct = [c for c in cfg.holdout_cell_types if c not in cell_types]
    if bad_ct:
        raise SplitError(
            f"Hold-out cell type(s) not in the data: {', '.join(bad_ct)}. "
            f"Known: {', '.join(cell_types)}."
        )
    if cfg.holdout:
        holdout = sorted(cfg.holdout)
    elif cfg.holdout_cell_types:
        holdout = []
    else:
        if not 0.0 <= cfg.holdout_fraction < 1.0:
            raise SplitError(f"--holdout-fraction must be in [0, 1), got {cfg.holdout_fraction}.")
        n = int(round(cfg.holdout_fraction * len(perturbations)))
        rng = np.random.default_rng(seed)
        holdout = sorted(rng.choice(perturbations, size=n, replace=False).tolist()) if n else []
    train = [p for p in perturbations if p not in holdout]
    if not train or (set(cfg.holdout_cell_types) >= set(cell_types)):
        raise SplitError(
            "The split leaves nothing to train on; hold out fewer perturbations or cell types."
        )
    held_types = tuple(sorted(cfg.holdout_cell_types))
    validation, validation_types = _validation(train, cell_types, held_types, cfg, seed)
    return Split(tuple(train), tuple(holdout), held_types, validation, validation_types)


# fewer training units than this keep all of them for training: one left out would cost
# the network a large share of what it learns from
MIN_VALIDATION_UNITS = 4


def _validation(
    train: list[str], cell_types: list[str], held_types: tuple[str, ...], cfg: DataConfig, seed
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The validation perturbations, or cell types when the split holds out cell types
    (the unit the held-out conditions are new in): a seeded share of the training ones."""
    if cfg.validation:
        unknown = [p for p in cfg.validation if p not in train]
        if unknown:
            raise SplitError(
                f"Validation perturbation(s) not among the training perturbations: "
                f"{', '.join(unknown)}."
            )
        return tuple(sorted(cfg.validation)), ()
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise SplitError(f"--validation-fraction must be in [0, 1), got {cfg.validation_fraction}.")
    by_type = bool(held_types)
    units = [c for c in cell_types if c not in held_types] if by_type else sorted(train)
    if cfg.validation_fraction == 0 or len(units) < MIN_VALIDATION_UNITS:
        return (), ()
    n = max(1, int(round(cfg.validation_fraction * len(units))))
    rng = np.random.default_rng([seed, 11])
    chosen = tuple(sorted(rng.choice(units, size=n, replace=False).tolist()))
    return ((), chosen) if by_type else (chosen, ())


class Expression:
    """The cells x genes matrix, log-normalised float32: CSR when the input was sparse (a real
    screen: 10-20 % non-zero), else dense. Indexing rows gives them as a dense array, so a
    minibatch or one condition is made dense, never the whole matrix."""

    def __init__(self, x):
        if sp.issparse(x):
            self._csr, self._dense = sp.csr_matrix(x, dtype=np.float32), None
            self._csr.sort_indices()
        else:
            self._csr, self._dense = None, np.ascontiguousarray(x, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._csr if self._dense is None else self._dense).shape

    dtype = np.dtype(np.float32)
    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def sparse(self) -> bool:
        return self._dense is None

    @property
    def nbytes(self) -> int:
        """Memory held: the CSR arrays, or the dense array."""
        if self._dense is not None:
            return self._dense.nbytes
        return self._csr.data.nbytes + self._csr.indices.nbytes + self._csr.indptr.nbytes

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, None)
        if self._dense is not None:
            out = self._dense[rows]
        else:
            out = self._csr[rows].toarray()
        return out if cols is None else out[:, cols]

    def __array__(self, dtype=None, copy=None):
        """The whole matrix, dense: only for small data (tests, the demo)."""
        out = self._dense if self._dense is not None else self._csr.toarray()
        return out if dtype is None else out.astype(dtype)

    def matrix(self):
        """The matrix as stored: ``scipy.sparse.csr_matrix`` or ``numpy.ndarray``."""
        return self._csr if self._dense is None else self._dense

    def mean(self, rows=None) -> np.ndarray:
        """Mean over ``rows`` (all when None) per gene, without making them dense."""
        m = (
            self.matrix()
            if rows is None
            else (self._csr[rows] if self.sparse else self._dense[rows])
        )
        return np.asarray(m.mean(0), dtype=np.float64).ravel()

    def chunks(self, size: int = 8192):
        """``(start, dense rows)`` in chunks of ``size`` rows."""
        for start in range(0, len(self), size):
            yield start, self[start : start + size]


@dataclass
class PerturbationData:
    """Expression of the model's genes plus the conditions to pair, train and evaluate on."""

    x: Expression  # (n_cells, n_genes) float32, log-normalised; rows index as dense arrays
    genes: list[str]
    cell_names: np.ndarray
    perturbation: np.ndarray  # per cell, str
    cell_type: np.ndarray  # per cell, str
    control: str
    split: Split
    conditions: list[Condition] = field(default_factory=list)

    @property
    def cell_types(self) -> list[str]:
        return sorted(set(self.cell_type.tolist()))

    def control_indices(self, cell_type: str) -> np.ndarray:
        return np.flatnonzero((self.perturbation == self.control) & (self.cell_type == cell_type))

    def train_conditions(self) -> list[Condition]:
        """The conditions the network trains on: neither held out nor validation."""
        return [c for c in self.conditions if not c.held_out and not c.validation]

    def validation_conditions(self) -> list[Condition]:
        return [c for c in self.conditions if c.validation]

    def with_validation_trained(self) -> PerturbationData:
        """The same data with the validation conditions counted as training ones: what a
        baseline learns from once its setting was chosen on them."""
        conditions = [dataclasses.replace(c, validation=False) for c in self.conditions]
        return dataclasses.replace(self, conditions=conditions)

    def heldout_conditions(self) -> list[Condition]:
        return [c for c in self.conditions if c.held_out]

    def find(self, perturbation: str, cell_type: str) -> Condition | None:
        return next(
            (
                c
                for c in self.conditions
                if c.perturbation == perturbation and c.cell_type == cell_type
            ),
            None,
        )


def populations(
    adata: ad.AnnData, cfg: DataConfig, *, seed: int, split: Split | None = None
) -> PerturbationData:
    """Build `PerturbationData` from a validated, preprocessed AnnData.

    ``split`` reuses a saved split (resume, evaluation); otherwise one is made from ``cfg``.
    """
    pert = adata.obs[cfg.perturbation_key].astype(str).to_numpy()
    if cfg.cell_type_key:
        ctype = adata.obs[cfg.cell_type_key].astype(str).to_numpy()
    else:
        ctype = np.full(adata.n_obs, keys.ALL_CELLS, dtype=object)
    if cfg.dose_key:
        dose = np.array([parse_dose(v) for v in adata.obs[cfg.dose_key]])
    else:
        dose = np.zeros(adata.n_obs)
    perts = sorted(set(pert.tolist()) - {cfg.control})
    cell_types = sorted(set(ctype.tolist()))
    split = split or make_split(perts, cell_types, cfg, seed=seed)
    data = PerturbationData(
        Expression(adata.X),
        list(map(str, adata.var_names)),
        adata.obs_names.to_numpy(),
        pert,
        ctype,
        cfg.control,
        split,
    )
    missing_ctrl = set()
    for (p, ct, d), idx in _group(pert, ctype, dose, cfg.control).items():
        ctrl = data.control_indices(ct)
        if len(ctrl) == 0:
            missing_ctrl.add(ct)
            continue
        data.conditions.append(
            Condition(p, ct, d, idx, ctrl, split.is_held_out(p, ct), split.is_validation(p, ct))
        )
    if missing_ctrl:
        warnings.warn(
            f"Cell type(s) without control cells were skipped: {sorted(missing_ctrl)}. "
            "Their perturbations cannot be paired.",
            stacklevel=2,
        )
    if not data.train_conditions():
        raise SplitError("No training condition has control cells of its cell type.")
    return data


def _group(pert, ctype, dose, control) -> dict[tuple[str, str, float], np.ndarray]:
    groups: dict[tuple[str, str, float], list[int]] = {}
    for i, (p, ct, d) in enumerate(zip(pert, ctype, dose, strict=True)):
        if p != control:
            groups.setdefault((p, ct, float(d)), []).append(i)
    return {k: np.asarray(v) for k, v in sorted(groups.items())}
