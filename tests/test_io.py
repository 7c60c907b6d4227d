"""Reading, validation and key detection (io.py), preprocessing (pp.py), the split (data.py)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from departures_core import errors, io, pp, runs
from departures_core.config import DataConfig, RunConfig
from departures_core.data import Split, make_split, parse_dose, populations, tokens_of
from departures_core.errors import (
    DataValidationError,
    DeparturesError,
    InputFileError,
    KeyNotFoundError,
    NoControlCellsError,
    SplitError,
    TooFewCellsError,
)

KEYS = io.ObsKeys(perturbation_key="condition", control="control", cell_type_key="cell_type")


def _toy(labels=None, n_genes=8, seed=0, counts=False) -> ad.AnnData:
    """Small valid AnnData: 6 controls and 5 cells per perturbation, 2 cell types."""
    labels = labels or ["control"] * 6 + ["A"] * 5 + ["B"] * 5 + ["A+B"] * 5
    rng = np.random.default_rng(seed)
    x = rng.poisson(40 if counts else 1.5, size=(len(labels), n_genes)).astype(np.float32)
    if not counts:
        x = np.log1p(x)
    cell_types = [("t1", "t2")[i % 2] for i in range(len(labels))]
    obs = pd.DataFrame(
        {"condition": labels, "cell_type": cell_types},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


# ---------------------------------------------------------------- reading files
def test_read_roundtrip(tmp_path):
    path = tmp_path / "ok.h5ad"
    _toy().write_h5ad(path)
    back = io.read(path)
    assert back.shape == (21, 8)
    assert list(back.obs["condition"])[:7] == ["control"] * 6 + ["A"]


def test_read_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        io.read(tmp_path / "missing.h5ad")


def test_read_folder(tmp_path):
    with pytest.raises(InputFileError, match="is a folder"):
        io.read(tmp_path)


def test_read_not_hdf5(tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_text("cell,gene\n1,2\n")
    with pytest.raises(InputFileError, match="not an .h5ad file") as info:
        io.read(path)
    assert "write_h5ad" in str(info.value)  # says how to fix it


def test_read_truncated_h5ad(tmp_path):
    path = tmp_path / "cut.h5ad"
    _toy().write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # HDF5 magic intact, body cut off
    with pytest.raises(InputFileError, match="could not be read") as info:
        io.read(path)
    assert "truncated" in str(info.value)


def test_error_types_are_user_errors():
    for name in (
        "InputFileError",
        "DataValidationError",
        "KeyNotFoundError",
        "NoControlCellsError",
        "TooFewCellsError",
        "SplitError",
        "UnknownPerturbationError",
        "RunError",
    ):
        assert issubclass(getattr(errors, name), DeparturesError)
    for name in ("KeyNotFoundError", "NoControlCellsError", "TooFewCellsError"):
        assert issubclass(getattr(errors, name), DataValidationError)


# ---------------------------------------------------------------- validation
def test_valid_toy_passes():
    io.validate(_toy(), KEYS)  # no exception
    assert io.rare_perturbations(_toy(), KEYS, min_cells=3) == {}


@pytest.mark.parametrize("field", ["perturbation_key", "cell_type_key"])
def test_unknown_obs_key(field):
    keys = io.ObsKeys(**{**KEYS.__dict__, field: "nope"})
    with pytest.raises(KeyNotFoundError, match="no column 'nope'") as info:
        io.validate(_toy(), keys)
    assert "condition" in str(info.value)  # lists the columns present


def test_no_control_cells():
    keys = io.ObsKeys("condition", "ctrl", "cell_type")
    with pytest.raises(NoControlCellsError, match="'condition' == 'ctrl'") as info:
        io.validate(_toy(), keys)
    assert "control" in str(info.value)  # shows the values present


def test_all_cells_control():
    adata = _toy(labels=["control"] * 10)
    with pytest.raises(DataValidationError, match="Every cell is a control"):
        io.validate(adata, KEYS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_nan_and_inf(bad, sparse):
    adata = _toy()
    adata.X[3, 2] = bad
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(DataValidationError, match="NaN or infinite") as info:
        io.validate(adata, KEYS)
    assert "1 NaN" in str(info.value)


def test_negative_values():
    adata = _toy()
    adata.X[0, 0] = -1.5
    with pytest.raises(DataValidationError, match="negative") as info:
        io.validate(adata, KEYS)
    assert "sc.pp.scale" in str(info.value)


def test_duplicate_gene_names():
    adata = _toy()
    adata.var_names = ["g0", "g1", "g1", "g3", "g4", "g5", "g6", "g7"]
    with pytest.raises(DataValidationError, match="Duplicate gene names") as info:
        io.validate(adata, KEYS)
    assert "g1" in str(info.value) and "var_names_make_unique" in str(info.value)


def test_empty_anndata():
    adata = _toy()[:0].copy()
    with pytest.raises(DataValidationError, match="empty"):
        io.validate(adata, KEYS)


def _with_rare():
    return _toy(labels=["control"] * 6 + ["A"] * 5 + ["B"] * 5 + ["RARE"] * 2)


def test_too_few_cells():
    with pytest.raises(TooFewCellsError, match=r"RARE \(2\)") as info:
        io.validate(_with_rare(), KEYS, min_cells=3)
    assert "--drop-rare" in str(info.value)
    assert io.rare_perturbations(_with_rare(), KEYS, min_cells=3) == {"RARE": 2}
    io.validate(_with_rare(), KEYS, min_cells=2)  # a lower minimum accepts it


def test_prepare_drop_rare_removes_the_rare_perturbation():
    adata = _with_rare()
    base = DataConfig(cell_type_key="cell_type", min_cells=3)
    with pytest.raises(TooFewCellsError):
        runs.prepare(adata, RunConfig(data=base))
    with pytest.warns(UserWarning, match="Dropped 1 perturbation"):
        prepared = runs.prepare(
            adata, RunConfig(data=DataConfig(**{**base.__dict__, "drop_rare": True}))
        )
    assert "RARE" not in set(prepared.obs["condition"])
    assert prepared.n_obs == adata.n_obs - 2
    assert adata.n_obs == 18  # the input is not modified


# ---------------------------------------------------------------- key detection
def test_detect_keys_on_demo(demo):
    found = io.detect_keys(demo)
    assert found.perturbation_key in ("perturbation", "condition")
    assert found.control == "control"
    assert found.cell_type_key == "cell_type"
    labels = demo.obs[found.perturbation_key].astype(str)
    assert (labels == "control").sum() == 400


def test_detect_keys_other_spellings():
    adata = _toy()
    gene = adata.obs["condition"].replace("control", "Non-Targeting")
    adata.obs = pd.DataFrame({"Gene": gene, "cell_line": "x"}, index=adata.obs_names)
    found = io.detect_keys(adata)
    assert found.perturbation_key == "Gene"  # column names are matched case-insensitively
    assert found.control == "Non-Targeting"  # and so are control values
    assert found.cell_type_key == "cell_line"


def test_detect_keys_fails_clearly():
    adata = _toy()
    adata.obs = pd.DataFrame({"guide": adata.obs["condition"]}, index=adata.obs_names)
    with pytest.raises(KeyNotFoundError, match="Could not find a control value") as info:
        io.detect_keys(adata)
    assert "guide" in str(info.value)  # names the columns present


# ---------------------------------------------------------------- preprocessing
def test_is_counts():
    counts = _toy(counts=True)
    assert pp.is_counts(counts)
    counts.X = sp.csr_matrix(counts.X)
    assert pp.is_counts(counts)
    assert not pp.is_counts(_toy())  # log1p values


def test_is_counts_false_on_demo(demo):
    assert not pp.is_counts(demo)


def test_perturbed_genes():
    labels = ["control", "A", "B+C", "A+C", "control"]
    assert pp.perturbed_genes(labels, control="control") == ["A", "B", "C"]


def _counts_with_quiet_perturbed_gene(n_cells=120, n_genes=60, seed=0):
    """Counts where perturbed gene 'Q' (column 0) barely varies and 'V' is not measured."""
    rng = np.random.default_rng(seed)
    x = rng.negative_binomial(2, 0.05, size=(n_cells, n_genes)).astype(np.float32)
    x[:, 0] = 20.0  # constant raw counts: lowest dispersion
    labels = ["control"] * 40 + ["Q"] * 40 + ["Q+V"] * 40
    genes = ["Q"] + [f"g{i}" for i in range(1, n_genes)]
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def test_preprocess_counts_log_normalises_and_keeps_perturbed_gene():
    adata = _counts_with_quiet_perturbed_gene()
    raw = adata.X.copy()
    out = pp.preprocess(
        adata, perturbation_key="condition", control="control", n_genes=10, copy=True
    )
    assert out.n_vars == 10
    assert "Q" in out.var_names  # forced in despite its low variance
    info = out.uns["departures_pp"]
    assert info["input_was_counts"] is True
    assert info["forced_genes"] == ["Q"]  # V is not measured: silently not forced
    assert out.X.dtype == np.float32
    cols = [list(adata.var_names).index(g) for g in out.var_names]
    expected = np.log1p(raw / raw.sum(1, keepdims=True) * 1e4)[:, cols]
    np.testing.assert_allclose(np.asarray(out.X), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.layers["counts"]), raw[:, cols])
    assert np.array_equal(adata.X, raw)  # copy=True leaves the input alone


def test_preprocess_selection_without_forcing_would_drop_the_gene():
    """Guards the test above: 'Q' is only kept because it is perturbed."""
    adata = _counts_with_quiet_perturbed_gene()
    adata.obs["condition"] = adata.obs["condition"].replace({"Q": "g1", "Q+V": "g2"})
    out = pp.preprocess(
        adata, perturbation_key="condition", control="control", n_genes=10, copy=True
    )
    assert "Q" not in out.var_names
    assert {"g1", "g2"} <= set(out.var_names) and out.n_vars == 10


def test_preprocess_log_data_is_used_as_is():
    adata = _toy()
    before = adata.X.copy()
    assert pp.preprocess(adata, perturbation_key="condition", control="control") is None
    assert adata.uns["departures_pp"]["input_was_counts"] is False
    np.testing.assert_allclose(adata.X, before)
    assert "counts" not in adata.layers


# ---------------------------------------------------------------- split
PERTS = [f"P{i}" for i in range(20)] + ["P1+P2"]


def test_split_holdout_list_is_respected():
    s = make_split(PERTS, ["t"], DataConfig(holdout=("P3", "P1+P2")), seed=0)
    assert s.holdout == ("P1+P2", "P3")
    assert set(s.train) == set(PERTS) - {"P3", "P1+P2"}
    assert s.is_held_out("P3", "t") and not s.is_held_out("P4", "t")


def test_split_fraction_is_seeded():
    cfg = DataConfig(holdout_fraction=0.25)
    a, b = make_split(PERTS, ["t"], cfg, seed=1), make_split(PERTS, ["t"], cfg, seed=1)
    assert a == b
    assert len(a.holdout) == round(0.25 * len(PERTS))
    assert set(a.holdout) | set(a.train) == set(PERTS) and not set(a.holdout) & set(a.train)
    others = {make_split(PERTS, ["t"], cfg, seed=s).holdout for s in range(2, 12)}
    assert len(others | {a.holdout}) > 1  # different seeds give different splits
    assert make_split(PERTS, ["t"], DataConfig(holdout_fraction=0.0), seed=0).holdout == ()


def test_split_errors():
    with pytest.raises(SplitError, match="not in the data: NOPE"):
        make_split(PERTS, ["t"], DataConfig(holdout=("P1", "NOPE")), seed=0)
    with pytest.raises(SplitError, match="cell type"):
        make_split(PERTS, ["t"], DataConfig(holdout_cell_types=("u",)), seed=0)
    with pytest.raises(SplitError, match="holdout-fraction"):
        make_split(PERTS, ["t"], DataConfig(holdout_fraction=1.0), seed=0)
    with pytest.raises(SplitError, match="nothing to train"):
        make_split(PERTS, ["t"], DataConfig(holdout=tuple(PERTS)), seed=0)
    with pytest.raises(SplitError, match="nothing to train"):
        make_split(PERTS, ["t", "u"], DataConfig(holdout_cell_types=("t", "u")), seed=0)


def test_split_roundtrip():
    s = Split(("A", "B"), ("C",), ("t2",))
    assert Split.from_dict(s.to_dict()) == s
    assert Split.from_dict(Split(("A",), ("C",)).to_dict()) == Split(("A",), ("C",))


def test_holdout_never_in_training_on_demo(demo):
    cfg = DataConfig(cell_type_key="cell_type", holdout=("FOXO4", "KLF1+MAP2K6", "SGK1"))
    data = populations(demo, cfg, seed=0)
    trained = {c.perturbation for c in data.train_conditions()}
    assert not trained & {"FOXO4", "KLF1+MAP2K6", "SGK1"}
    held = data.heldout_conditions()
    assert {c.perturbation for c in held} == {"FOXO4", "KLF1+MAP2K6", "SGK1"}
    assert len([c for c in held if c.perturbation == "SGK1"]) == 4  # in all 4 cell types
    for c in data.conditions:
        assert np.all(data.perturbation[c.perturbed] == c.perturbation)
        assert np.all(data.cell_type[c.perturbed] == c.cell_type)
        assert np.all(data.perturbation[c.control] == "control")
        assert np.all(data.cell_type[c.control] == c.cell_type)
        assert len(c.control) == 100


def test_holdout_cell_type_on_demo(demo):
    cfg = DataConfig(cell_type_key="cell_type", holdout_cell_types=("T98G",))
    data = populations(demo, cfg, seed=0)
    t98g = [c for c in data.conditions if c.cell_type == "T98G"]
    assert len(t98g) == 9 and all(c.held_out for c in t98g)
    assert all(c.cell_type != "T98G" for c in data.train_conditions())
    assert {c.cell_type for c in data.train_conditions()} == {"A172", "U87MG", "k562"}
    assert data.split.holdout == ()  # only the cell type is held out


def test_fraction_split_on_demo_is_by_perturbation(demo):
    data = populations(demo, DataConfig(cell_type_key="cell_type"), seed=0)
    assert len(data.split.holdout) == round(0.25 * 33)
    for c in data.conditions:
        assert c.held_out == (c.perturbation in data.split.holdout)


def test_tokens_and_doses():
    assert tokens_of("A+B") == ["A", "B"] and tokens_of("A") == ["A"]
    assert parse_dose("10") == 10.0 and parse_dose("1+3") == 2.0
    with pytest.raises(DataValidationError, match="not a number"):
        parse_dose("high")
