"""A generated corpus of bad (and edge-valid) inputs, and what every layer must do with them.

Each `Case` builds its input in memory, from a small base AnnData (3 perturbations + control,
2 cell types, 20 genes, raw counts), and states the expected outcome:

* library — ``io.read`` then ``io.validate`` with `KEYS`: raises ``error`` whose message holds
  ``message``; ``error=None`` means the input is valid and must simply work;
* auto-detection — ``io.detect_keys``: finds `KEYS`, or raises ``detect_error`` (with
  ``detect_message``) for inputs whose columns cannot be detected;
* command line — ``train`` exits 2 with one ``error: ...`` line holding the message (with the
  keys given explicitly: ``message``; auto-detected: what `Case.shown` says);
* app — uploading the file shows ``st.error`` holding what `Case.shown` says, or, for a valid
  input, "Ready to train".
"""

from __future__ import annotations

import io as _io
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from departures_core import io
from departures_core.errors import (
    DataValidationError,
    DeparturesError,
    InputFileError,
    KeyNotFoundError,
    NoControlCellsError,
    TooFewCellsError,
)

KEYS = io.ObsKeys("condition", "control", "cell_type")
PERTURBATIONS = ("G1", "G2", "G1+G3")  # G1..G3 are measured genes
N_CONTROL, N_PERTURBED, N_GENES = 10, 8, 20  # cells per cell type
MANY = 10_000  # perturbation labels in the "many labels" cases


def base(*, seed: int = 0) -> ad.AnnData:
    """68 cells x 20 genes of raw counts (float32, integer-valued); categorical obs."""
    per_type = ["control"] * N_CONTROL + [p for p in PERTURBATIONS for _ in range(N_PERTURBED)]
    labels = per_type * 2
    cell_types = ["t1"] * len(per_type) + ["t2"] * len(per_type)
    rng = np.random.default_rng(seed)
    x = rng.poisson(20, size=(len(labels), N_GENES)).astype(np.float32)
    x[:, :3] += 40  # the perturbed genes are well expressed; max > 30 reads as counts
    genes = ["G1", "G2", "G3", *(f"g{i}" for i in range(3, N_GENES))]
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels), "cell_type": pd.Categorical(cell_types)},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def with_labels(labels, *, seed: int = 0) -> ad.AnnData:
    """A counts AnnData with the given perturbation labels (two cell types, alternating)."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(20, size=(len(labels), N_GENES)).astype(np.float32)
    x[:, 0] += 40
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(labels),
            "cell_type": pd.Categorical([("t1", "t2")[i % 2] for i in range(len(labels))]),
        },
        index=[f"cell{i}" for i in range(len(labels))],
    )
    genes = ["G1", "G2", "G3", *(f"g{i}" for i in range(3, N_GENES))]
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    """``adata`` as the bytes of an .h5ad file."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Variable names are not unique"
        path = Path(tmp) / "x.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


# ---------------------------------------------------------------- builders
def _not_hdf5() -> bytes:
    return b"cell,G1,G2\ncell0,1,2\ncell1,0,5\n"


def _truncated() -> bytes:
    data = h5ad_bytes(base())
    return data[: len(data) // 2]  # HDF5 magic intact, body cut off


def _hdf5_not_anndata() -> bytes:
    buf = _io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["counts"] = np.arange(12).reshape(3, 4)
    return buf.getvalue()


def _modified(edit: Callable[[ad.AnnData], ad.AnnData | None]) -> Callable[[], ad.AnnData]:
    def build() -> ad.AnnData:
        adata = base()
        out = edit(adata)
        return adata if out is None else out

    return build


def _set_x(value: float, *, sparse: bool = False):
    def edit(adata):
        adata.X[5, 2] = value
        adata.X[40, 7] = value
        if sparse:
            adata.X = sp.csr_matrix(adata.X)

    return _modified(edit)


def _relabel(mapping: dict[str, str]):
    def edit(adata):
        adata.obs["condition"] = adata.obs["condition"].astype(str).replace(mapping)

    return _modified(edit)


def _one_cell_perturbation() -> ad.AnnData:
    adata = base()
    adata.obs["condition"] = adata.obs["condition"].astype(str)
    adata.obs.iloc[-1, adata.obs.columns.get_loc("condition")] = "G4"  # one G4 cell
    return adata


def _many_labels(cells_each: int):
    def build() -> ad.AnnData:
        labels = ["control"] * 40 + [f"P{i}" for i in range(MANY) for _ in range(cells_each)]
        return with_labels(labels)

    return build


# ---------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """One input and what each layer must do with it (see the module docstring).

    ``message`` says what is wrong and ``fix`` (a fragment of the same message) how to fix it.
    """

    name: str
    build: Callable[[], ad.AnnData | bytes]
    error: type[DeparturesError] | None = None
    message: str = ""
    fix: str = ""
    detect_error: type[DeparturesError] | None = None
    detect_message: str = ""
    drop_rare_ok: bool = False  # valid once rare perturbations are dropped

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def shown(self) -> tuple[type[DeparturesError] | None, str]:
        """What a user sees with auto-detected keys: the detection or the validation error."""
        if self.detect_error is not None:
            return self.detect_error, self.detect_message
        return self.error, self.message

    def data(self) -> bytes:
        """The input as the bytes of the file a user would give."""
        built = self.build()
        return built if isinstance(built, bytes) else h5ad_bytes(built)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / f"{self.name}.h5ad"
        path.write_bytes(self.data())
        return path


def _no_obs_columns(adata):
    adata.obs = pd.DataFrame(index=adata.obs_names)


def _no_condition_column(adata):
    del adata.obs["condition"]


def _duplicate_genes(adata):
    adata.var_names = ["G1", "G2", "G3", "g3", "g3", *(f"g{i}" for i in range(5, N_GENES))]


def _no_x(adata):
    adata.X = None


def _all_zero_x(adata):
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)  # expression left in a layer


def _negative(adata):
    adata.X = np.log1p(adata.X)
    adata.X[3, 4] = -0.7  # as after sc.pp.scale


def _sparse(fmt):
    def edit(adata):
        adata.X = sp.csr_matrix(adata.X) if fmt == "csr" else sp.csc_matrix(adata.X)

    return _modified(edit)


def _dtype(dtype):
    def edit(adata):
        adata.X = adata.X.astype(dtype)

    return _modified(edit)


def _normalised_not_logged(adata):
    adata.X = adata.X / adata.X.sum(1, keepdims=True) * 1e4  # CP10k, no log1p


def _log_normalised(adata):
    adata.X = np.log1p(adata.X / adata.X.sum(1, keepdims=True) * 1e4)


def _string_obs(adata):
    adata.obs = adata.obs.astype(str).astype(object)


def _gene_not_measured(adata):
    adata.obs["condition"] = adata.obs["condition"].astype(str).replace({"G2": "NOTMEASURED"})


_WRITE = "adata.write_h5ad"
_REEXPORT = "re-export it with anndata.write_h5ad"
_EMPTY, _SHAPE = "The AnnData is empty", "kept some cells and genes"
_NO_COLUMN, _ADD_COLUMN = "obs has no column 'condition'", "or add the perturbation label"
_NAN, _NAN_FIX = "NaN or infinite", "np.nan_to_num"
_RARE_FIX = "--drop-rare, or tick 'Drop perturbations with fewer than 3 cells'"
CASES: tuple[Case, ...] = (
    # files that are not AnnData
    Case("not_hdf5", _not_hdf5, InputFileError, "is not an .h5ad file", _WRITE),
    Case("empty_file", lambda: b"", InputFileError, "is not an .h5ad file", _WRITE),
    Case("truncated", _truncated, InputFileError, "could not be read as AnnData", _REEXPORT),
    Case("hdf5_not_anndata", _hdf5_not_anndata, InputFileError, "could not be read", _REEXPORT),
    # readable AnnData that cannot be trained on
    Case(
        "no_cells",
        _modified(lambda a: a[:0].copy()),
        DataValidationError,
        f"{_EMPTY} (0 cells x 20 genes)",
        _SHAPE,
    ),
    Case(
        "no_genes",
        _modified(lambda a: a[:, :0].copy()),
        DataValidationError,
        f"{_EMPTY} (68 cells x 0 genes)",
        _SHAPE,
    ),
    Case(
        "no_obs_columns",
        _modified(_no_obs_columns),
        KeyNotFoundError,
        f"{_NO_COLUMN} for the perturbation label. Columns present: none",
        _ADD_COLUMN,
        detect_error=KeyNotFoundError,
        detect_message="Could not find a control value",
    ),
    Case(
        "no_perturbation_column",
        _modified(_no_condition_column),
        KeyNotFoundError,
        f"{_NO_COLUMN} for the perturbation label. Columns present: cell_type",
        _ADD_COLUMN,
        detect_error=KeyNotFoundError,
        detect_message="Columns present: cell_type",
    ),
    Case(
        "no_control_cells",
        _relabel({"control": "ctl-guide"}),
        NoControlCellsError,
        "No cell has 'condition' == 'control'. Values present include: ctl-guide",
        "Choose the value that marks unperturbed control cells",
        detect_error=KeyNotFoundError,
        detect_message="Could not find a control value",
    ),
    Case(
        "only_control_cells",
        _relabel({p: "control" for p in PERTURBATIONS}),
        DataValidationError,
        "Every cell is a control",
        "Check that 'condition' is the perturbation column",
    ),
    Case(
        "one_cell_perturbation",
        _one_cell_perturbation,
        TooFewCellsError,
        "1 perturbation(s) have fewer than 3 cells: G4 (1)",
        _RARE_FIX,
        drop_rare_ok=True,
    ),
    Case(
        "many_labels_one_cell_each",
        _many_labels(1),
        TooFewCellsError,
        f"{MANY} perturbation(s) have fewer than 3 cells: P0 (1)",
        _RARE_FIX,
    ),
    Case("nan_in_x", _set_x(np.nan), DataValidationError, f"2 {_NAN}", _NAN_FIX),
    Case("inf_in_x", _set_x(np.inf), DataValidationError, f"2 {_NAN}", _NAN_FIX),
    Case(
        "nan_in_sparse_x", _set_x(np.nan, sparse=True), DataValidationError, f"2 {_NAN}", _NAN_FIX
    ),
    Case(
        "negative_values",
        _modified(_negative),
        DataValidationError,
        "negative values (min -0.7)",
        "undo sc.pp.scale",
    ),
    Case(
        "normalised_not_logged",
        _modified(_normalised_not_logged),
        DataValidationError,
        "X looks neither like raw counts (integers) nor like log-normalised expression",
        "sc.pp.log1p(adata)",
    ),
    Case(
        "duplicate_genes",
        _modified(_duplicate_genes),
        DataValidationError,
        "Duplicate gene names (g3",
        "adata.var_names_make_unique()",
    ),
    Case(
        "all_zero_x",
        _modified(_all_zero_x),
        DataValidationError,
        "X holds only zeros",
        "(layers: counts), copy it into X first, e.g. adata.X = adata.layers['counts']",
    ),
    Case(
        "no_x", _modified(_no_x), DataValidationError, "no X matrix", "store expression in adata.X"
    ),
    # valid inputs that must simply work
    Case("valid_dense_counts", base),
    Case("valid_sparse_csr", _sparse("csr")),
    Case("valid_sparse_csc", _sparse("csc")),
    Case("valid_int64_counts", _dtype(np.int64)),
    Case("valid_int32_counts", _dtype(np.int32)),
    Case("valid_float64_counts", _dtype(np.float64)),
    Case("valid_log_normalised", _modified(_log_normalised)),
    Case("valid_string_obs", _modified(_string_obs)),
    Case("valid_perturbed_gene_not_measured", _modified(_gene_not_measured)),
)
BY_NAME = {c.name: c for c in CASES}
BAD = tuple(c for c in CASES if not c.valid)
VALID = tuple(c for c in CASES if c.valid)
