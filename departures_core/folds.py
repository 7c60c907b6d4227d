"""K-fold leave-perturbations-out cross-validation: every perturbation (or cell type) is
held out, as the test set of exactly one fold; the same folds for every method.

A fold names what it holds out; `fold_config` turns it into the run's split. Inside each
fold the split keeps a share of the training perturbations out of the network's training
as validation (`data.make_split`), so no setting is chosen on the fold's test conditions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import SplitError

BY = ("perturbation", "cell_type")


@dataclass(frozen=True)
class Fold:
    """One fold's test set: perturbations held out everywhere, or one or more cell types
    (every perturbation in them)."""

    index: int
    holdout: tuple[str, ...] = ()
    holdout_cell_types: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "holdout": list(self.holdout),
            "holdout_cell_types": list(self.holdout_cell_types),
        }


def make_folds(
    perturbations: list[str], cell_types: list[str], k: int, *, by: str, seed: int
) -> list[Fold]:
    """``k`` seeded folds. ``by="perturbation"``: the perturbations shuffled and dealt
    round-robin, so each is held out exactly once and fold sizes differ by at most one.
    ``by="cell_type"``: one held-out cell type per fold, ``k`` of them drawn (all of them
    when ``k`` is their number) - a cell type's conditions are held out together."""
    if by not in BY:
        raise SplitError(f"Folds are made by one of {', '.join(BY)}, not {by!r}.")
    units = sorted(perturbations if by == "perturbation" else cell_types)
    if k < 2 or k > len(units):
        raise SplitError(
            f"--folds must be between 2 and the number of {by.replace('_', ' ')}s "
            f"({len(units)}), got {k}."
        )
    rng = np.random.default_rng([seed, 5])
    order = [units[i] for i in rng.permutation(len(units))]
    if by == "cell_type":
        return [Fold(i, holdout_cell_types=(ct,)) for i, ct in enumerate(sorted(order[:k]))]
    return [Fold(i, holdout=tuple(sorted(order[i::k]))) for i in range(k)]


def fold_config(data: DataConfig, fold: Fold) -> DataConfig:
    """``data`` with the fold's test set as the split's hold-out."""
    return dataclasses.replace(
        data,
        holdout=fold.holdout,
        holdout_fraction=0.0,
        holdout_cell_types=fold.holdout_cell_types,
    )


def write(folds: list[Fold], path: str | Path, **about) -> None:
    """The folds as JSON (with ``about``: dataset, seed, ...), written atomically."""
    from .model import atomic_write_text

    doc = {**about, "folds": [f.to_dict() for f in folds]}
    atomic_write_text(Path(path), json.dumps(doc, indent=2))


def read(path: str | Path) -> list[Fold]:
    doc = json.loads(Path(path).read_text())
    return [
        Fold(int(f["index"]), tuple(f["holdout"]), tuple(f.get("holdout_cell_types", ())))
        for f in doc["folds"]
    ]
