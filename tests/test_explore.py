"""The exploration layer: conditions of a run, predicted cells of a condition, the UMAP they
are drawn on, their scores, activation tables and the figures of the Perturbations and
Activation views."""

import json
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from departures_core import activation, explore, explore_figures, keys
from departures_core.errors import ConfigError, UnknownPerturbationError


@pytest.fixture(scope="module")
def held(run):
    """A held-out condition of the tiny run: (perturbation, cell_type)."""
    c = run.data.heldout_conditions()[0]
    return c.perturbation, c.cell_type


@pytest.fixture(scope="module")
def cells(run, held):
    return explore.condition_cells(run, *held, n_cells=60, seed=3, steps=10)


def test_conditions_table_lists_every_condition_held_out_first(run):
    table = explore.conditions_table(run)
    assert len(table) == len(run.data.conditions)
    n_held = int(table["held_out"].sum())
    assert n_held == len(run.data.heldout_conditions()) > 0
    assert table["held_out"].iloc[:n_held].all() and not table["held_out"].iloc[n_held:].any()
    row = table.iloc[0]
    cond = run.data.find(row["perturbation"], row["cell_type"])
    assert row["n_perturbed"] == len(cond.perturbed) and row["n_control"] == len(cond.control)


def test_condition_cells_shapes_and_seed(run, held, cells):
    cond = run.data.find(*held)
    n_genes = len(run.data.genes)
    assert cells.predicted.shape == (60, n_genes)
    assert cells.observed.shape == (len(cond.perturbed), n_genes)
    assert cells.control.shape == (len(cond.control), n_genes)
    assert set(cells.control_rows) <= set(cond.control)
    assert np.isfinite(cells.predicted).all() and (cells.predicted >= 0).all()
    assert cells.held_out and "held out" in cells.label
    again = explore.condition_cells(run, *held, n_cells=60, seed=3, steps=10)
    np.testing.assert_array_equal(again.predicted, cells.predicted)
    other = explore.condition_cells(run, *held, n_cells=60, seed=4, steps=10)
    assert not np.array_equal(other.predicted, cells.predicted)
    assert cells.request == (*held, 60, 3, 10, False)
    assert cells.gene_index(cells.genes[7]) == 7


def test_condition_cells_rejects_bad_requests(run, held):
    with pytest.raises(UnknownPerturbationError, match="was not observed"):
        explore.condition_cells(run, "NOT-A-GENE", held[1])
    with pytest.raises(ConfigError, match="n_cells"):
        explore.condition_cells(run, *held, n_cells=0)
    with pytest.raises(ConfigError, match="steps"):
        explore.condition_cells(run, *held, steps=0)


def test_oversized_trajectories_are_capped_with_a_notice(run, held, monkeypatch):
    n_genes = len(run.data.genes)
    monkeypatch.setattr(explore, "MAX_TRAJECTORY_VALUES", 20 * n_genes * 6)
    cells = explore.condition_cells(run, *held, n_cells=500, steps=5, trajectory=True)
    assert cells.simulation.x_path.shape == (6, 20, n_genes)
    assert "showing 20 cells" in cells.notice


def test_cell_map_places_fit_cells_at_their_fitted_positions(run, held, cells):
    cmap = explore.cell_map(run, [held[0]], held[1], seed=0)
    cond = run.data.find(*held)
    assert set(cond.perturbed) <= set(cmap.rows)
    assert set(run.data.control_indices(held[1])) <= set(cmap.rows)
    got = cmap.coords_of(cmap.rows[:10], run.data.x[cmap.rows[:10]])
    np.testing.assert_array_equal(got, cmap.coords[:10])
    placed = cmap.place(cells.predicted)
    assert placed.shape == (60, 2) and np.isfinite(placed).all()
    # transform puts cells near where their fitted twins are
    lo, hi = cmap.coords.min(0), cmap.coords.max(0)
    span = hi - lo
    assert ((placed >= lo - span) & (placed <= hi + span)).all()


def test_condition_scores_include_baselines_and_saved_methods(run, cells):
    saved = pd.DataFrame(
        {
            "method": ["random_pairing", "departures"],
            "perturbation": [cells.perturbation] * 2,
            "cell_type": [cells.cell_type] * 2,
            "metric": ["e_distance", "e_distance"],
            "value": [9.0, 123.0],
        }
    )
    wide = explore.condition_scores(run, cells, saved)
    assert list(wide.index) == ["departures", "control", "mean_shift", "random_pairing"]
    assert wide.loc["random_pairing", "e_distance"] == 9.0
    assert wide.loc["departures", "e_distance"] != 123.0  # live samples, not the saved ones
    assert wide.loc["control", "e_distance"] > 0


def test_top_changes_sorted_by_observed_change(cells):
    top = explore.top_changes(cells, 15)
    assert len(top) == 15
    assert (np.diff(np.abs(top["observed_change"].to_numpy())) <= 1e-9).all()
    j = cells.gene_index(top["gene"].iloc[0])
    expected = cells.observed[:, j].mean() - cells.control[:, j].mean()
    assert top["observed_change"].iloc[0] == pytest.approx(expected, rel=1e-5)


def test_predicted_cells_download_round_trips(run, held, cells, tmp_path):
    other = run.data.heldout_conditions()[-1]
    second = explore.condition_cells(run, other.perturbation, other.cell_type, n_cells=7)
    out = explore.predicted_anndata(run, [cells, second])
    assert out.n_obs == 67 and list(out.var_names) == cells.genes
    path = tmp_path / "pred.h5ad"
    path.write_bytes(explore.h5ad_bytes(out))
    back = ad.read_h5ad(path)
    assert back.obs[keys.PERTURBATION].tolist() == [held[0]] * 60 + [other.perturbation] * 7
    np.testing.assert_allclose(back.X[:60], cells.predicted)
    assert back.obs[keys.CONTROL_CELL].isin(run.data.cell_names).all()


# ------------------------------------------------------------------ activation
def _cells(control, observed, predicted, genes=None, **kw):
    genes = genes or [f"g{i}" for i in range(np.shape(control)[1])]
    return SimpleNamespace(
        control=np.asarray(control, float),
        observed=np.asarray(observed, float),
        predicted=np.asarray(predicted, float),
        genes=genes,
        perturbation=kw.get("perturbation", "P"),
        held_out=kw.get("held_out", False),
    )


def _toy():
    # 4 cells x 4 genes; fractions active: control, observed, predicted
    # g0: 0.0 -> 1.0 (on), predicted 0.75 (caught); g1: 1.0 -> 0.25 (off), predicted 1.0 (missed)
    # g2: 0.5 -> 0.5 (none), predicted 0.0 (false off); g3: 0.5 -> 0.5, predicted 0.5
    ctrl = [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0]]
    obs = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]]
    pred = [[1, 1, 0, 1], [1, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0]]
    return _cells(ctrl, obs, pred)


def test_activation_table_finds_and_scores_switches():
    table = activation.activation_table(_toy(), threshold=0.3).set_index("gene")
    assert table.loc["g0", ["control", "observed", "predicted"]].tolist() == [0.0, 1.0, 0.75]
    assert table["switch"].to_dict() == {"g0": "on", "g1": "off", "g2": "", "g3": ""}
    assert table["predicted_switch"].to_dict() == {"g0": "on", "g1": "", "g2": "off", "g3": ""}
    assert table["caught"].to_dict() == {"g0": True, "g1": False, "g2": False, "g3": False}
    assert list(activation.activation_table(_toy(), threshold=0.3)["gene"][:2]) == ["g0", "g1"]


def test_switch_summary_counts():
    s = activation.switch_summary(activation.activation_table(_toy(), threshold=0.3))
    assert (s["switched_on"], s["switched_off"], s["caught"], s["false"]) == (1, 1, 1, 1)
    assert s["recall"] == 0.5 and s["precision"] == 0.5
    obs, pred = np.array([1.0, 0.25, 0.5, 0.5]), np.array([0.75, 1.0, 0.0, 0.5])
    assert s["activation_pcc"] == pytest.approx(np.corrcoef(obs, pred)[0, 1])


def test_activation_rejects_bad_input():
    with pytest.raises(ConfigError, match="threshold"):
        activation.activation_table(_toy(), threshold=1.5)
    with pytest.raises(ConfigError, match="at least one cell"):
        activation.fraction_active(np.zeros((0, 3)))
    with pytest.raises(ConfigError, match="at least one perturbation"):
        activation.switch_matrix([])


def test_switch_matrix_orders_genes_by_largest_switch():
    a = _toy()
    b = _cells(a.control, a.control, a.control, perturbation="Q", held_out=True)
    observed, predicted = activation.switch_matrix([a, b], n_genes=2)
    assert list(observed.index) == ["P", "Q (held out)"]
    assert list(observed.columns) == ["g0", "g1"]
    assert observed.loc["P", "g0"] == 1.0 and observed.loc["Q (held out)"].eq(0).all()
    assert predicted.loc["P", "g1"] == 0.0 and predicted.shape == observed.shape


# ------------------------------------------------------------------ figures
def _spec(fig) -> dict:
    return json.loads(fig.to_json())


def test_prediction_map_draws_each_cell_set_once():
    rng = np.random.default_rng(0)
    groups = [
        ("A", "observed", rng.normal(size=(5, 2))),
        ("A", "predicted", rng.normal(size=(6, 2))),
        ("A", "control", rng.normal(size=(4, 2))),
        ("B", "observed", rng.normal(size=(3, 2))),
        ("B", "predicted", rng.normal(size=(2, 2))),
    ]
    fig = explore_figures.prediction_map(groups, title="t")
    names = [t.name for t in fig.data]
    assert names[0] == "control (4)"  # underneath
    assert set(names[1:]) == {
        "A · observed (5)",
        "A · predicted (6)",
        "B · observed (3)",
        "B · predicted (2)",
    }
    colour = {t.name: t.marker.color for t in fig.data}
    assert colour["A · observed (5)"] == colour["A · predicted (6)"]
    assert colour["A · observed (5)"] != colour["B · observed (3)"]
    assert {t.marker.symbol for t in fig.data if "predicted" in t.name} == {"diamond-open"}
    assert fig.layout.xaxis.title.text == "UMAP 1"
    assert sum(len(t.x) for t in fig.data) == 20


def test_score_and_gene_figures(cells):
    scores = pd.DataFrame(
        {
            "perturbation": ["P", "P", "P"],
            "method": ["departures", "control", "mean_shift"],
            "e_distance": [0.5, 1.4, 1.2],
            "pearson_delta": [0.9, np.nan, 0.7],
        }
    )
    bars = explore_figures.method_bars(scores, "e_distance")
    assert [t.name for t in bars.data] == ["departures", "control", "mean_shift"]
    assert "lower is better" in bars.layout.title.text
    assert (
        "higher is better" in explore_figures.method_bars(scores, "pearson_delta").layout.title.text
    )
    with pytest.raises(KeyError):
        explore_figures.method_bars(scores, "nope")

    top = explore.top_changes(cells, 10)
    de = explore_figures.de_changes(top, title="DE")
    assert [t.name for t in de.data] == ["observed", "predicted (Departures)"]
    assert list(de.data[0].y) == top["gene"].tolist()[::-1]  # largest change on top
    assert np.isfinite(np.asarray(de.data[1].x, float)).all()

    j = cells.gene_index(top["gene"].iloc[0])
    violin = explore_figures.gene_distribution(
        {
            "control": cells.control[:, j],
            "observed": cells.observed[:, j],
            "predicted": cells.predicted[:, j],
        },
        top["gene"].iloc[0],
    )
    assert [t.type for t in violin.data] == ["violin"] * 3
    active = (cells.observed[:, j] > 0).mean()
    assert f"{active:.0%} active" in violin.data[1].name
    assert violin.layout.yaxis.title.text.startswith(top["gene"].iloc[0])


def test_activation_figures():
    table = activation.activation_table(_toy(), threshold=0.3)
    fig = explore_figures.activation_scatter(table, threshold=0.3, title="act")
    spec = _spec(fig)
    legend = [t["name"] for t in spec["data"] if t.get("showlegend") is not False and "name" in t]
    assert legend == ["no switch (2)", "switched off (1)", "switched on (1)"]
    assert fig.layout.xaxis.title.text == "observed" and fig.layout.yaxis.title.text == "predicted"
    observed, predicted = activation.switch_matrix([_toy()], n_genes=3)
    heat = explore_figures.switch_heatmaps(observed, predicted)
    assert [t.type for t in heat.data] == ["heatmap", "heatmap"]
    assert heat.data[0].zmax == -heat.data[0].zmin == 1.0
    assert np.array_equal(np.asarray(heat.data[1].z), predicted.to_numpy())
    with pytest.raises(ValueError, match="same rows"):
        explore_figures.switch_heatmaps(observed, predicted.iloc[:, :2])
