"""The statistics of an evaluation (departures_core/report.py) on frames whose answer is known."""

import json

import numpy as np
import pandas as pd
import pytest

from departures_core import paths, report


def _long(scores: dict, metric: str = "e_distance", **columns) -> pd.DataFrame:
    """The long frame of ``{method: values per condition}`` (conditions p0, p1, ...)."""
    rows = [
        {"method": m, "perturbation": f"p{i}", "cell_type": "k562", "metric": metric, "value": v}
        for m, values in scores.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows).assign(**columns)


def _row(table, **where) -> pd.Series:
    hit = table
    for k, v in where.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, (where, hit)
    return hit.iloc[0]


def test_a_method_better_on_every_condition_wins_all_with_a_small_p():
    rng = np.random.default_rng(0)
    control = rng.uniform(1, 2, 20)
    frame = _long({"departures": control - rng.uniform(0.1, 0.5, 20), "control": control})
    row = _row(report.paired(frame), baseline="control", metric="e_distance", effect="all")
    assert (row["n"], row["wins"], row["ties"], row["losses"]) == (20, 20, 0, 0)
    assert row["p_value"] < 1e-4
    assert row["median_difference"] < 0
    swapped = frame.assign(
        method=frame["method"].map({"departures": "control", "control": "departures"})
    )
    worse = _row(report.paired(swapped), baseline="control", effect="all")
    assert worse["losses"] == 20 and worse["p_value"] < 1e-4


def test_the_direction_of_each_metric_is_respected():
    assert report.higher_is_better("activation_pcc")
    assert report.higher_is_better("pearson_delta_pooled_de20")
    assert report.higher_is_better("overlap_at_N") and report.higher_is_better("vcc_score")
    for lower in ("e_distance", "e_distance_de20", "emd_de40", "mmd", "mae"):
        assert not report.higher_is_better(lower)
    assert not report.higher_is_better("discrimination_score_l1")
    higher = {"departures": np.linspace(0.8, 0.9, 8), "mean_shift": np.linspace(0.5, 0.6, 8)}
    frame = pd.concat([_long(higher, "activation_pcc"), _long(higher, "emd")])
    pairs = report.paired(frame)
    assert _row(pairs, metric="activation_pcc", baseline="mean_shift", effect="all")["wins"] == 8
    assert _row(pairs, metric="emd", baseline="mean_shift", effect="all")["losses"] == 8


def test_ties_are_counted_and_left_out_of_the_test():
    base = np.arange(1.0, 11.0)
    # 3 exact ties, 1 within the relative tolerance, 6 wins
    ours = np.concatenate([base[:3], base[3:4] * (1 + 1e-12), base[4:] - 0.5])
    pairs = report.paired(_long({"departures": ours, "control": base}))
    row = _row(pairs, baseline="control", effect="all")
    assert (row["wins"], row["ties"], row["losses"]) == (6, 4, 0)
    assert np.isfinite(row["p_value"])
    few = _long({"departures": ours[:7], "control": base[:7]})  # 3 non-tied pairs
    assert np.isnan(_row(report.paired(few), baseline="control", effect="all")["p_value"])


def test_the_bootstrap_interval_holds_the_median_and_narrows_with_more_conditions():
    rng = np.random.default_rng(1)
    widths = []
    for n in (15, 240):
        table = report.medians(_long({"departures": rng.normal(1, 0.3, n)}), n_boot=500)
        row = _row(table, method="departures")
        assert row["lo"] <= row["median"] <= row["hi"] and row["n"] == n
        widths.append(row["hi"] - row["lo"])
    assert widths[1] < widths[0] / 2
    again = report.medians(_long({"departures": np.arange(9.0)}), n_boot=200, seed=3)
    assert again.equals(report.medians(_long({"departures": np.arange(9.0)}), n_boot=200, seed=3))


def test_200_cells_fall_back_to_the_per_control_rows_of_the_baselines():
    per_control = _long(
        {"departures": [1.0, 2.0, 3.0], "control": [5.0, 5.0, 5.0]}, cells="per_control"
    )
    more = _long({"departures": [0.1, 0.2, 0.3]}, cells="200")
    frame = pd.concat([per_control, more], ignore_index=True)
    wide = report.conditions(frame, cells="200")
    assert wide[("e_distance", "departures")].tolist() == [0.1, 0.2, 0.3]
    assert wide[("e_distance", "control")].tolist() == [5.0, 5.0, 5.0]
    assert report.conditions(frame)[("e_distance", "departures")].tolist() == [1.0, 2.0, 3.0]
    assert report.cell_counts(frame) == ["per_control", "200"]
    # read back from a CSV with only "200" rows, the column is numeric: still "200"
    assert report.conditions(more.assign(cells=200), cells="200").shape[0] == 3


def test_the_effect_size_splits_at_three_times_the_noise_floor():
    control = [1.0, 1.0, 1.0, 1.0]
    frame = pd.concat(
        [
            _long({"departures": [0.5, 0.5, 0.5, 2.0], "control": control}),
            _long({"noise_floor": [0.2, 0.3, 0.5, 0.9]}),  # 3x: 0.6, 0.9 -> clear; 1.5, 2.7
        ]
    )
    wide = report.conditions(frame)
    assert wide[("effect", "")].tolist() == ["clear", "clear", "small", "small"]
    assert "noise_floor" not in wide.columns.get_level_values("method")
    pairs = report.paired(frame)
    assert _row(pairs, baseline="control", effect="clear")[["wins", "losses"]].tolist() == [2, 0]
    assert _row(pairs, baseline="control", effect="small")[["wins", "losses"]].tolist() == [1, 1]
    assert _row(pairs, baseline="control", effect="all")["n"] == 4
    missing = pd.concat([frame[frame["perturbation"] != "p3"], _long({"control": [1.0] * 4})])
    assert report.conditions(missing.drop_duplicates(["method", "perturbation"]))[
        ("effect", "")
    ].tolist() == ["clear", "clear", "small", "unknown"]


def test_an_old_frame_without_split_cells_or_noise_floor_works(tmp_path):
    # an evaluation written before splits, sample sizes and noise floors: the shipped one,
    # stripped of them
    frame = pd.read_csv(paths.DEMO_RUN / "eval" / "metrics.csv")
    frame = frame[(frame["cells"] == "per_control") & (frame["method"] != "noise_floor")]
    frame = frame.drop(columns=["split", "cells"])
    wide = report.conditions(frame)
    assert len(wide) == 11 and set(wide[("effect", "")]) == {"unknown"}
    assert set(report.paired(frame)["effect"]) == {"all"}
    assert {"departures", "control", "mean_shift", "pooled_perturbed"} <= set(
        report.medians(frame)["method"]
    )
    assert report.splits(frame) == ["test"] and report.cell_counts(frame) == ["per_control"]
    json_path, csv_path = report.write(frame, tmp_path)
    summary = json.loads(json_path.read_text())  # strict JSON: no NaN
    assert summary["splits"]["test"]["per_control"]["conditions"] == 11
    assert summary["directions"]["activation_pcc"] == "higher"
    assert set(pd.read_csv(csv_path)["table"]) == {"medians", "paired"}
    text = report.markdown(frame)
    assert "| departures |" in text and "best (" in text


def test_the_best_baseline_is_chosen_per_metric_and_per_dataset():
    n = 6
    good, bad = np.full(n, 1.0), np.full(n, 3.0)
    scores = {
        "e_distance": {"departures": np.full(n, 2.0), "mean_shift": good, "pooled_perturbed": bad},
        "activation_pcc": {
            "departures": np.full(n, 0.5),
            "mean_shift": bad / 4,
            "pooled_perturbed": good * 0.9,
        },
    }
    one = pd.concat([_long(s, m) for m, s in scores.items()])
    # in a second dataset the roles swap for e_distance
    swapped = _long({"departures": np.full(n, 2.0), "mean_shift": bad, "pooled_perturbed": good})
    frame = pd.concat([one.assign(dataset="a"), swapped.assign(dataset="b")], ignore_index=True)
    pairs = report.paired(frame)
    best = pairs[(pairs["baseline"] == "best") & (pairs["effect"] == "all")].set_index(
        ["dataset", "metric"]
    )
    assert best.loc[("a", "e_distance"), "best_of"] == "mean_shift"  # lower is better
    assert best.loc[("a", "activation_pcc"), "best_of"] == "pooled_perturbed"  # higher is better
    assert best.loc[("b", "e_distance"), "best_of"] == "pooled_perturbed"
    assert best.loc[("a", "e_distance"), "losses"] == n
    meds = report.medians(frame, n_boot=50)
    assert set(meds["dataset"]) == {"a", "b"}
    assert "random_pairing" not in set(pairs["baseline"])


def test_ablations_are_not_baselines_and_splits_stay_apart():
    frame = pd.concat(
        [
            _long(
                {"departures": [1.0] * 5, "control": [2.0] * 5, "random_pairing": [0.5] * 5},
                split="test",
            ),
            _long({"departures": [3.0] * 5, "control": [2.0] * 5}, split="validation"),
        ]
    )
    test = report.paired(frame)
    assert set(test["baseline"]) == {"control", "best"}
    assert _row(test, baseline="best", effect="all")["best_of"] == "control"
    assert (
        _row(report.paired(frame, split="validation"), baseline="control", effect="all")["losses"]
        == 5
    )
    assert report.splits(frame) == ["test", "validation"]
    assert set(report.summarise(frame, n_boot=20)["splits"]) == {"test", "validation"}
    with pytest.raises(ValueError, match="value"):
        report.normalise(frame.drop(columns="value"))
