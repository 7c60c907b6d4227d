"""The corpus of bad and edge-valid inputs (tests/corpus.py) through the library and the
command line; a property test of the loader and validator on random AnnData."""

import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from corpus import BAD, BY_NAME, CASES, KEYS, MANY, VALID, with_labels
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from departures_core import cli, io, launch, runs
from departures_core.config import DataConfig, RunConfig
from departures_core.data import populations
from departures_core.errors import DeparturesError, TooFewCellsError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every case written once, as the file a user would give: name -> path."""
    folder = tmp_path_factory.mktemp("corpus")
    return {c.name: c.write(folder) for c in CASES}


# ---------------------------------------------------------------- library
def _read_and_validate(path, **kwargs):
    adata = io.read(path)
    io.validate(adata, KEYS, **kwargs)
    return adata


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_library_raises_a_typed_error_saying_what_and_how(case, files):
    with pytest.raises(DeparturesError) as info:
        _read_and_validate(files[case.name])
    assert type(info.value) is case.error
    msg = str(info.value)
    assert case.message in msg and case.fix in msg, msg
    assert "\n" not in msg  # one line: the CLI prints it as is


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_detection_finds_the_keys_or_says_why_not(case, files):
    try:
        adata = io.read(files[case.name])
        found = io.detect_keys(adata)
    except DeparturesError as exc:
        error, message = case.shown
        assert type(exc) is error and message in str(exc)
    else:
        assert found == KEYS and case.detect_error is None


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_inputs_are_accepted_and_prepared(case, files):
    adata = _read_and_validate(files[case.name])
    assert launch.check_dataset(adata, KEYS) == {}
    prepared = runs.prepare(adata, RunConfig(data=DataConfig(cell_type_key="cell_type")))
    x = _dense(prepared.X)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert x.max() < 15  # counts are log-normalised, log-normalised data kept as they are
    data = populations(prepared, DataConfig(cell_type_key="cell_type"), seed=0)
    assert len(data.conditions) == 6  # 3 perturbations x 2 cell types


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def test_counts_and_floats_give_the_same_training_data(files):
    """Integer counts, float counts, dense and sparse: one and the same preprocessed X."""
    config = RunConfig(data=DataConfig(cell_type_key="cell_type"))
    names = [
        "valid_dense_counts",
        "valid_int64_counts",
        "valid_int32_counts",
        "valid_float64_counts",
        "valid_sparse_csr",
        "valid_sparse_csc",
    ]
    xs = [_dense(runs.prepare(io.read(files[n]), config).X) for n in names]
    for name, x in zip(names[1:], xs[1:], strict=True):
        np.testing.assert_allclose(x, xs[0], rtol=1e-5, err_msg=name)


def test_categorical_and_string_obs_give_the_same_conditions(files):
    cfg = DataConfig(cell_type_key="cell_type")
    conds = []
    for name in ("valid_dense_counts", "valid_string_obs"):
        prepared = runs.prepare(io.read(files[name]), RunConfig(data=cfg))
        data = populations(prepared, cfg, seed=0)
        conds.append([(c.perturbation, c.cell_type, len(c.perturbed)) for c in data.conditions])
    assert conds[0] == conds[1]


def test_a_perturbed_gene_that_is_not_measured_is_kept_as_a_label(files):
    """A CRISPR target need not be among the measured genes: it trains as a perturbation,
    only its own expression cannot be forced into the gene set."""
    adata = io.read(files["valid_perturbed_gene_not_measured"])
    prepared = runs.prepare(adata, RunConfig(data=DataConfig(cell_type_key="cell_type")))
    assert "NOTMEASURED" not in prepared.var_names
    assert prepared.uns["departures_pp"]["forced_genes"] == ["G1", "G3"]
    data = populations(prepared, DataConfig(cell_type_key="cell_type"), seed=0)
    assert {c.perturbation for c in data.conditions} == {"G1", "G1+G3", "NOTMEASURED"}


def test_one_cell_perturbation_is_dropped_on_request(files):
    adata = io.read(files["one_cell_perturbation"])
    assert launch.check_dataset(adata, KEYS, drop_rare=True) == {"G4": 1}
    config = RunConfig(data=DataConfig(cell_type_key="cell_type", drop_rare=True))
    with pytest.warns(UserWarning, match="Dropped 1 perturbation"):
        prepared = runs.prepare(adata, config)
    assert "G4" not in set(prepared.obs["condition"]) and prepared.n_obs == adata.n_obs - 1
    io.validate(adata, KEYS, min_cells=1)  # or accepted with a lower minimum


def test_many_labels_are_validated_quickly():
    """10,000 labels: the message lists a few and counts the rest; with enough cells each
    they are accepted; dropping them all is refused, not turned into 'only controls'."""
    adata = BY_NAME["many_labels_one_cell_each"].build()
    start = time.perf_counter()
    with pytest.raises(TooFewCellsError) as info:
        io.validate(adata, KEYS)
    assert f"and {MANY - 5} more" in str(info.value) and len(str(info.value)) < 400
    with pytest.raises(TooFewCellsError, match="would leave only control cells"):
        io.drop_rare(adata, KEYS, min_cells=3)
    enough = with_labels(["control"] * 40 + [f"P{i}" for i in range(MANY) for _ in range(3)])
    io.validate(enough, KEYS)
    assert io.detect_keys(enough) == KEYS
    assert time.perf_counter() - start < 10


def test_genes_that_do_not_vary_are_selected_without_error():
    """scanpy cannot rank genes by dispersion when none varies; the first ones are kept."""
    adata = with_labels(["control"] * 6 + ["G1"] * 6)
    adata.X = np.ones_like(adata.X)  # log-normalised, every gene constant
    io.validate(adata, KEYS)
    prepared = runs.prepare(adata, RunConfig(data=DataConfig(n_genes=4)))
    assert list(prepared.var_names) == ["G1", "G2", "G3", "g3"]  # G1 first: it is perturbed


# ---------------------------------------------------------------- command line
TINY = ["--epochs", "1", "--batch-size", "64", "--n-genes", "20", "--device", "cpu"]
EXPLICIT = "--perturbation-key condition --control control --cell-type-key cell_type".split()


def _train(path, out, capsys, *args) -> tuple[int, list[str], list[str]]:
    """``train`` in-process: exit code, non-empty stderr lines, and the warnings a real run
    would print to stderr (Python's default filters hide deprecations only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(["train", str(path), *TINY, *args, "--out", str(out)])
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [str(w.message) for w in caught if not issubclass(w.category, hidden)]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines, shown


@pytest.mark.parametrize("keys", ["explicit", "detected"])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_cli_exits_2_with_one_line(case, keys, files, tmp_path, capsys):
    code, lines, shown = _train(
        files[case.name], tmp_path / "run", capsys, *(EXPLICIT if keys == "explicit" else [])
    )
    assert code == cli.USER_ERROR
    assert len(lines) == 1 and not shown, (lines, shown)
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
    message = case.message if keys == "explicit" else case.shown[1]
    assert message in lines[0]
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_cli_trains_on_valid_inputs(case, files, tmp_path, capsys):
    code, lines, _ = _train(files[case.name], tmp_path / "run", capsys)
    assert code == 0, lines
    assert (tmp_path / "run" / "model.pt").is_file()
    assert lines[-1] == f"saved run to {tmp_path / 'run'}"


def test_cli_drop_rare(files, tmp_path, capsys):
    code, lines, shown = _train(
        files["one_cell_perturbation"], tmp_path / "run", capsys, "--drop-rare"
    )
    assert code == 0, lines
    assert "Dropped 1 perturbation(s) with < 3 cells." in shown
    code, lines, _ = _train(
        files["many_labels_one_cell_each"], tmp_path / "r2", capsys, "--drop-rare"
    )
    assert code == cli.USER_ERROR and len(lines) == 1
    assert "would leave only control cells" in lines[0]


# ---------------------------------------------------------------- property test
LABELS = ("ctrl", "Control", "A", "B", "A+B", "G1", "", "nan", "+", "P 1")  # and "control"
SPECIAL = (np.nan, np.inf, -np.inf, -1.0, -1e-7)
DTYPES = (np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_)


@st.composite
def anndatas(draw) -> ad.AnnData:
    """Random shapes (0-30 cells, 0-10 genes), dtypes, dense or sparse X of counts, log values
    or neither, sometimes with a NaN, inf or negative value; perturbation labels from a random
    few (maybe without the control); maybe duplicate gene names, categorical or string obs, a
    cell-type column."""
    n_obs, n_vars = draw(st.sampled_from(range(31))), draw(st.sampled_from(range(11)))
    x = draw(hnp.arrays(np.float64, (n_obs, n_vars), elements=st.floats(0, 500, width=32)))
    scale = draw(st.sampled_from(["counts", "log", "neither"]))
    x = np.round(x) if scale == "counts" else x / 50 if scale == "log" else x
    if x.size:
        for _ in range(draw(st.integers(0, 2))):
            i, j = draw(st.integers(0, n_obs - 1)), draw(st.integers(0, n_vars - 1))
            x[i, j] = draw(st.sampled_from(SPECIAL))
    dtype = draw(st.sampled_from(DTYPES))
    if not np.issubdtype(dtype, np.floating):
        x = np.clip(np.nan_to_num(x, posinf=0, neginf=0), -1 if dtype != np.uint8 else 0, 200)
    x = x.astype(dtype)
    layout = draw(st.sampled_from(["dense", "csr", "csc"]))
    if layout != "dense" and dtype not in (np.float16, np.bool_):  # scipy has no float16
        x = sp.csr_matrix(x) if layout == "csr" else sp.csc_matrix(x)
    used = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3, unique=True))
    if draw(st.sampled_from([True, True, True, False])):  # mostly with control cells
        used.append("control")
    labels = draw(st.lists(st.sampled_from(used), min_size=n_obs, max_size=n_obs))
    obs = pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(n_obs)])
    if draw(st.booleans()):
        types = st.lists(st.sampled_from(["t1", "t2"]), min_size=n_obs, max_size=n_obs)
        obs["cell_type"] = draw(types)
    if draw(st.booleans()):
        obs = obs.astype("category")
    pool = ["A", "B", "G1", "g"] if draw(st.sampled_from([True, False, False, False])) else None
    genes = [pool[i % len(pool)] if pool else f"g{i}" for i in range(n_vars)]
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def _accepts(action) -> bool:
    """True when ``action`` works, False when it raises a `DeparturesError`; any other
    exception fails the test."""
    try:
        action()
    except DeparturesError as exc:
        event(f"{type(exc).__name__}: {str(exc)[:40]}")
        return False
    return True


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(adata=anndatas(), min_cells=st.integers(0, 4))
def test_loader_and_validator_accept_or_raise_typed_errors(adata, min_cells, tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "x.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    back = io.read(path)  # anything anndata writes, we can read
    assert back.shape == adata.shape
    keys = io.ObsKeys("condition", "control", "cell_type" if "cell_type" in adata.obs else None)
    accepted = _accepts(lambda: io.validate(back, keys, min_cells=min_cells))
    assert accepted == _accepts(lambda: io.validate(adata, keys, min_cells=min_cells))
    event("accepted" if accepted else "refused")
    _accepts(lambda: io.detect_keys(back))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dropped n perturbation(s)"
        _accepts(lambda: io.drop_rare(back, keys, min_cells=min_cells))
    if accepted:  # what validation accepts, preparation takes (or refuses clearly)
        data = DataConfig(
            cell_type_key=keys.cell_type_key, n_genes=4, min_cells=min_cells, holdout_fraction=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. scanpy's "Some cells have zero counts"
            prepared = runs.prepare(back, RunConfig(data=data))
        assert np.isfinite(_dense(prepared.X)).all() and prepared.n_vars == min(4, back.n_vars)
        event(
            "populations built"
            if _accepts(lambda: populations(prepared, data, seed=0))
            else "populations refused"
        )
