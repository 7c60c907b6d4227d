"""Read and validate ``.h5ad`` files; detect obs keys; the bundled demo dataset."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys, paths, pp
from .errors import (
    DataValidationError,
    InputFileError,
    KeyNotFoundError,
    NoControlCellsError,
    TooFewCellsError,
)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_LOG_VALUE = 50.0  # log1p(CP10k) stays below ~10, log2(TPM + 1) below ~20
ASSETS = paths.ASSETS  # the checkout's assets/, or the copy an install ships
DEMO_PATH = paths.DEMO_DATA


@dataclass(frozen=True)
class ObsKeys:
    """How a dataset's obs columns map onto the model's conditioning."""

    perturbation_key: str
    control: str
    cell_type_key: str | None = None
    dose_key: str | None = None


DEMO_KEYS = ObsKeys(perturbation_key="condition", control="control", cell_type_key="cell_type")


def read(path: str | os.PathLike) -> ad.AnnData:
    """Read an ``.h5ad`` file, turning every way it can fail into an `InputFileError`."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file. Check the path.")
    if path.is_dir():
        raise InputFileError(f"{path} is a folder; give the path of an .h5ad file.")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_MAGIC:
        raise InputFileError(
            f"{path.name} is not an .h5ad file (it is not HDF5). Save your AnnData with "
            "adata.write_h5ad('file.h5ad') and upload that file."
        )
    _check_memory(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # `validate` reports duplicate gene names as an error that says how to fix them
            warnings.filterwarnings("ignore", "Variable names are not unique", UserWarning)
            return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for damaged files
        raise InputFileError(
            f"{path.name} could not be read as AnnData ({type(exc).__name__}: {exc}). "
            "The file may be truncated or written by an incompatible tool; re-export it "
            "with anndata.write_h5ad."
        ) from exc


# reading, the counts kept in a layer, the log-normalised copy and the model's genes: the
# peak of `runs.prepare` measured about 4x the matrix as read (bench/scale.py)
PEAK_PER_MATRIX = 4.0


def matrix_bytes(path: str | os.PathLike) -> int | None:
    """Bytes of the file's ``X`` once in memory (CSR: values and column indices; dense: the
    array), from its header alone; None when the file does not say."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            x = f["X"]
            if isinstance(x, h5py.Dataset):
                return int(np.prod(x.shape)) * x.dtype.itemsize
            data, indices = x["data"], x["indices"]
            return int(data.shape[0]) * (data.dtype.itemsize + indices.dtype.itemsize)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_memory(path: Path) -> None:
    """Refuse a file whose preprocessing cannot fit in memory before reading any of it."""
    size, free = matrix_bytes(path), available_memory()
    if size is None or free is None or size * PEAK_PER_MATRIX <= free:
        return
    raise InputFileError(
        f"{path.name} needs about {size * PEAK_PER_MATRIX / 1e9:.1f} GB of memory to read and "
        f"preprocess ({size / 1e9:.1f} GB of expression), and {free / 1e9:.1f} GB is free. "
        "Store X sparse (scipy.sparse.csr_matrix) if it is dense, keep fewer genes or cells "
        "(e.g. the highly variable genes), or use a machine with more memory."
    )


def load_demo() -> ad.AnnData:
    """The bundled PerturBench development set (Norman 2019 + McFaline 2023, BSD-3-Clause)."""
    return read(DEMO_PATH)


def _control_value(values: pd.Series) -> str | None:
    present = {str(v).lower(): str(v) for v in values.unique()}
    for cand in keys.CONTROL_CANDIDATES:
        if cand in present:
            return present[cand]
    return None


def detect_keys(
    adata: ad.AnnData,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    cell_type_key: str | None = None,
    dose_key: str | None = None,
) -> ObsKeys:
    """Fill in the obs keys that were not given: perturbation column, control value, cell type
    and dose columns. A given perturbation column is searched for its control value.

    Raises
    ------
    DataValidationError
        If ``adata`` has no cells or no genes (there is nothing to detect).
    KeyNotFoundError
        If a given column is not in obs, or no obs column looks like a perturbation label
        with a control value.
    """
    _check_not_empty(adata)
    obs = adata.obs
    lowered = {c.lower(): c for c in obs.columns}
    if perturbation_key is not None:
        _check_column(adata, perturbation_key, "perturbation label")
        candidates = [perturbation_key]
    else:
        candidates = [lowered[c] for c in keys.PERTURBATION_CANDIDATES if c in lowered]
    found = None
    for col in candidates:
        value = control if control is not None else _control_value(obs[col])
        if value is not None:
            found = (col, value)
            break
    if found is None:
        where = (
            f"column '{perturbation_key}'"
            if perturbation_key
            else (f"any of the columns {', '.join(keys.PERTURBATION_CANDIDATES)}")
        )
        raise KeyNotFoundError(
            f"Could not find a control value (such as 'control', 'ctrl', 'non-targeting') in "
            f"{where}. Columns present: {', '.join(map(str, obs.columns)) or 'none'}. "
            "Name the perturbation column and its control value explicitly."
        )
    _check_column(adata, cell_type_key, "cell type")
    _check_column(adata, dose_key, "dose")
    if cell_type_key is None:
        cell_type_key = next((lowered[c] for c in keys.CELL_TYPE_CANDIDATES if c in lowered), None)
    if dose_key is None:
        dose_key = next(
            (lowered[c.lower()] for c in keys.DOSE_CANDIDATES if c.lower() in lowered), None
        )
    return ObsKeys(found[0], found[1], cell_type_key, dose_key)


def _check_column(adata: ad.AnnData, key: str | None, role: str) -> None:
    if key is not None and key not in adata.obs.columns:
        raise KeyNotFoundError(
            f"obs has no column '{key}' for the {role}. Columns present: "
            f"{', '.join(map(str, adata.obs.columns)) or 'none'}. Choose one of those, "
            f"or add the {role} of every cell to adata.obs['{key}']."
        )


def _check_not_empty(adata: ad.AnnData) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataValidationError(
            f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes): there is "
            "nothing to train on. Check that filtering or subsetting kept some cells and "
            "genes (adata.shape) before saving it."
        )


def _check_matrix(adata: ad.AnnData) -> None:
    x = adata.X
    if x is None:
        raise DataValidationError("The AnnData has no X matrix; store expression in adata.X.")
    values = x.data if sp.issparse(x) else np.asarray(x)
    if not np.issubdtype(values.dtype, np.number):
        raise DataValidationError(
            f"X holds {values.dtype} values; expression must be numeric "
            "(e.g. adata.X = adata.X.astype('float32'))."
        )
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise DataValidationError(
            f"X contains {n_bad} NaN or infinite value(s). Remove or impute them "
            "(e.g. adata.X = np.nan_to_num(adata.X)) before uploading."
        )
    if not values.any():
        layers = ", ".join(adata.layers) or "none"
        raise DataValidationError(
            f"X holds only zeros. If the expression is in a layer (layers: {layers}), copy "
            "it into X first, e.g. adata.X = adata.layers['counts']."
        )
    if values.min() < 0:
        raise DataValidationError(
            f"X contains negative values (min {values.min():.3g}). Give raw counts or "
            "log-normalised expression, not scaled/centred data (undo sc.pp.scale)."
        )
    if values.max() > MAX_LOG_VALUE and not pp.is_counts(adata):
        raise DataValidationError(
            f"X looks neither like raw counts (integers) nor like log-normalised expression "
            f"(values up to {values.max():.4g}). Give raw counts, or log-transform normalised "
            "data first (sc.pp.log1p(adata))."
        )


def validate(adata: ad.AnnData, obs_keys: ObsKeys, *, min_cells: int = 3) -> None:
    """Check that ``adata`` can be trained on with ``obs_keys``; raise a typed error if not.

    Perturbations with fewer than ``min_cells`` cells raise `TooFewCellsError`;
    `drop_rare` removes them instead.
    """
    _check_not_empty(adata)
    if adata.var_names.has_duplicates:
        dups = adata.var_names[adata.var_names.duplicated()].unique()[:5]
        raise DataValidationError(
            f"Duplicate gene names ({', '.join(map(str, dups))}...). Make them unique with "
            "adata.var_names_make_unique()."
        )
    _check_column(adata, obs_keys.perturbation_key, "perturbation label")
    _check_column(adata, obs_keys.cell_type_key, "cell type")
    _check_column(adata, obs_keys.dose_key, "dose")
    labels = adata.obs[obs_keys.perturbation_key].astype(str)
    if not (labels == obs_keys.control).any():
        sample = ", ".join(labels.value_counts().index[:8])
        raise NoControlCellsError(
            f"No cell has '{obs_keys.perturbation_key}' == '{obs_keys.control}'. Values present "
            f"include: {sample}. Choose the value that marks unperturbed control cells."
        )
    if (labels == obs_keys.control).all():
        raise DataValidationError(
            f"Every cell is a control ('{obs_keys.control}'); there is no perturbation to "
            f"learn. Check that '{obs_keys.perturbation_key}' is the perturbation column and "
            "that the file holds the perturbed cells too."
        )
    _check_matrix(adata)
    rare = rare_perturbations(adata, obs_keys, min_cells=min_cells)
    if rare:
        listed = ", ".join(f"{p} ({n})" for p, n in list(rare.items())[:5])
        more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
        raise TooFewCellsError(
            f"{len(rare)} perturbation(s) have fewer than {min_cells} cells: {listed}{more}. "
            f"Drop them (--drop-rare, or tick 'Drop perturbations with fewer than {min_cells} "
            "cells' on the Data page) or lower --min-cells."
        )


def rare_perturbations(adata: ad.AnnData, obs_keys: ObsKeys, *, min_cells: int) -> dict[str, int]:
    """Perturbations (not the control) with fewer than ``min_cells`` cells, with their counts."""
    counts = adata.obs[obs_keys.perturbation_key].astype(str).value_counts()
    counts = counts[(counts < min_cells) & (counts.index != obs_keys.control)]
    return {str(k): int(v) for k, v in counts.items()}


def drop_rare(adata: ad.AnnData, obs_keys: ObsKeys, *, min_cells: int) -> ad.AnnData:
    """Return ``adata`` without perturbations that have fewer than ``min_cells`` cells.

    Raises `TooFewCellsError` when that would drop every perturbation.
    """
    rare = rare_perturbations(adata, obs_keys, min_cells=min_cells)
    if not rare:
        return adata
    labels = adata.obs[obs_keys.perturbation_key].astype(str)
    if set(labels) - {obs_keys.control} <= set(rare):
        raise TooFewCellsError(
            f"All {len(rare)} perturbation(s) have fewer than {min_cells} cells: dropping them "
            "would leave only control cells. Lower --min-cells, or group the labels (e.g. by "
            "target gene) so that each has enough cells."
        )
    warnings.warn(f"Dropped {len(rare)} perturbation(s) with < {min_cells} cells.", stacklevel=2)
    keep = ~labels.isin(list(rare))
    return adata[keep.to_numpy()].copy()
