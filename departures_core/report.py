"""Honest statistics of an evaluation (DESIGN §3): medians with bootstrap intervals, and a
method against each baseline condition by condition — wins / ties / losses and a paired
Wilcoxon signed-rank test — split by effect size.

The input is the long frame `evaluate` writes (``RUN/eval/metrics.csv``): columns ``method,
perturbation, cell_type, metric, value``; optionally ``split`` ("test" / "validation"),
``cells`` ("per_control": one predicted cell per control cell; "200": 200 predicted cells),
``dataset`` and ``fold`` (benchmarks), and rows of method ``noise_floor``, metric
``e_distance`` (two random halves of the condition's observed cells). Files written before
those existed read as split "test", cells "per_control" and an unknown effect size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "departures"
BASELINES = ("control", "mean_shift", "pooled_perturbed", "additive", "linear", "nearest")
ABLATIONS = ("random_pairing", "no_discrete")  # variants of the model: never baselines
METHODS = (MODEL, *BASELINES, *ABLATIONS)  # display order
NOISE, BEST, PER_CONTROL = "noise_floor", "best", "per_control"
CLEAR_EFFECT = 3.0  # "clear": the control baseline's e_distance > 3 x the noise floor
EFFECTS = ("all", "clear", "small")
MIN_PAIRS = 5  # fewer non-tied pairs: no Wilcoxon p-value
TIE_RTOL = 1e-9  # a tie: |a - b| <= TIE_RTOL * max(|a|, |b|)
KEY_METRICS = (
    "e_distance",
    "e_distance_de20",
    "emd",
    "mmd",
    "activation_pcc",
    "pearson_delta_de20",
    "pearson_delta_pooled_de20",
    "vcc_score",
)
_HIGHER = ("activation_pcc", "overlap_at_N", "de_direction_match", "vcc_score")
RULES = {
    "direction": "higher is better for activation_pcc, pearson*, overlap_at_N, "
    "de_direction_match and vcc_score; lower for every other metric (distances, errors)",
    "tie": f"|method - baseline| <= {TIE_RTOL:g} x the larger of |method| and |baseline|",
    "effect": f"clear: the control baseline's e_distance > {CLEAR_EFFECT:g} x the noise floor "
    "(e_distance between two random halves of the observed cells); small: otherwise; "
    "unknown: no noise floor",
    "interval": "95 % bootstrap percentile interval of the median, resampling conditions",
    "wilcoxon": f"two-sided paired Wilcoxon signed-rank test over the non-tied conditions; "
    f"none with fewer than {MIN_PAIRS}",
    "best": "per dataset and metric, the one baseline with the best median over the "
    "dataset's conditions, compared condition by condition (a per-condition oracle would "
    "pick with the answer known); chosen on the conditions it is compared on, which "
    "favours the baseline",
}


def higher_is_better(metric: str) -> bool:
    """The one table of metric directions (`RULES` ``"direction"``)."""
    return metric in _HIGHER or metric.startswith("pearson")


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``split`` and ``cells`` filled in (old files: "test", "per_control")."""
    missing = {"method", "perturbation", "cell_type", "metric", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"an evaluation frame needs the columns {sorted(missing)}")
    out = frame.copy()
    out["split"] = out["split"].fillna("test").astype(str) if "split" in out else "test"
    # a file with only "200" rows reads that column as integers
    out["cells"] = out["cells"].fillna(PER_CONTROL).astype(str) if "cells" in out else PER_CONTROL
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out


def condition_keys(frame: pd.DataFrame) -> list[str]:
    """What names one condition: dataset and fold (when present), perturbation, cell type."""
    return [k for k in ("dataset", "fold") if k in frame] + ["perturbation", "cell_type"]


def splits(frame: pd.DataFrame) -> list[str]:
    """The splits present, "test" first."""
    return sorted(set(normalise(frame)["split"]), key=lambda s: (s != "test", s))


def cell_counts(frame: pd.DataFrame) -> list[str]:
    """The predicted-cell counts present, "per_control" first."""
    f = normalise(frame)
    return sorted(set(f.loc[f["method"] != NOISE, "cells"]), key=lambda c: (c != PER_CONTROL, c))


def order(names) -> list[str]:
    """Methods in `METHODS` order and metrics in `KEY_METRICS` order, the others after."""
    rank = {m: i for i, m in enumerate((*METHODS, *KEY_METRICS))}
    return sorted(set(names), key=lambda m: (rank.get(m, len(rank)), m))


def conditions(frame: pd.DataFrame, *, split: str = "test", cells: str = PER_CONTROL):
    """Scores per condition: index `condition_keys`, columns ``(metric, method)``, and an
    ``("effect", "")`` column: "clear", "small" or "unknown" (`RULES` ``"effect"``).

    With ``cells`` other than "per_control", a method with no row of that cell count (a
    baseline: it predicts one fixed set of cells) is scored by its per_control rows.
    """
    f = normalise(frame)
    f = f[f["split"] == split]
    keys = condition_keys(f)
    scores = f[f["method"] != NOISE]
    has_own = scores["method"].isin(set(scores.loc[scores["cells"] == cells, "method"]))
    use = np.where(has_own, cells, PER_CONTROL)
    scores = scores[scores["cells"] == use]
    wide = scores.groupby([*keys, "metric", "method"])["value"].mean().unstack(["metric", "method"])
    columns = [
        (metric, method)
        for metric in order(wide.columns.get_level_values(0))
        for method in order(wide.columns.get_level_values(1))
        if (metric, method) in wide.columns
    ]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(columns, names=["metric", "method"]))
    noise = f[(f["method"] == NOISE) & (f["metric"] == "e_distance")]
    noise = noise.groupby(keys)["value"].mean().reindex(wide.index)
    control = wide[("e_distance", "control")] if ("e_distance", "control") in wide else None
    effect = pd.Series("unknown", index=wide.index, dtype=object)
    if control is not None:
        known = noise.notna() & control.notna()
        effect[known] = np.where(control[known] > CLEAR_EFFECT * noise[known], "clear", "small")
    wide[("effect", "")] = effect
    return wide


def _by_dataset(wide: pd.DataFrame):
    """``(dataset or None, rows)`` per dataset of a `conditions` frame."""
    if "dataset" in wide.index.names:
        yield from wide.groupby(level="dataset", sort=True)
    else:
        yield None, wide


def _bootstrap(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    lo, hi = np.percentile(np.median(values[idx], axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def medians(
    frame: pd.DataFrame,
    *,
    split: str = "test",
    cells: str = PER_CONTROL,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (dataset if present, method, metric): the median over conditions, its 95 %
    bootstrap interval ``lo``, ``hi`` (conditions resampled, `RULES` ``"interval"``), ``n``
    conditions and ``higher_is_better``. Every column is resampled with the same ``seed``."""
    rows = []
    for dataset, wide in _by_dataset(conditions(frame, split=split, cells=cells)):
        for metric, method in wide.columns.drop(("effect", "")):
            values = wide[(metric, method)].dropna().to_numpy(float)
            if not len(values):
                continue
            lo, hi = _bootstrap(values, n_boot, seed)
            row = {"method": method, "metric": metric, "median": float(np.median(values))}
            row.update(lo=lo, hi=hi, n=len(values), higher_is_better=higher_is_better(metric))
            rows.append(row if dataset is None else {"dataset": dataset, **row})
    columns = ["method", "metric", "median", "lo", "hi", "n", "higher_is_better"]
    if "dataset" in frame:
        columns.insert(0, "dataset")
    return pd.DataFrame(rows, columns=columns)


def outcomes(a, b, *, higher: bool) -> np.ndarray:
    """Per pair, 1 where ``a`` is better than ``b``, -1 where worse, 0 on a tie (`RULES`
    ``"tie"``) or where either is NaN."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a - b
    tie = ~(np.abs(diff) > TIE_RTOL * np.maximum(np.abs(a), np.abs(b)))  # NaN: a "tie"
    return np.where(tie, 0, np.where((diff > 0) == higher, 1, -1))


def compare(a, b, *, higher: bool) -> dict:
    """``a`` against ``b`` over the conditions where both have a value: ``n``, ``wins``,
    ``ties``, ``losses`` (for ``a``, `outcomes`), ``median_difference`` (a - b, in the
    metric's units) and the Wilcoxon ``p_value`` (NaN below `MIN_PAIRS` non-tied)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    result = outcomes(a, b, higher=higher)
    diff = (a - b)[result != 0]
    p = wilcoxon(diff).pvalue if len(diff) >= MIN_PAIRS else np.nan
    return {
        "n": int(len(a)),
        "wins": int((result == 1).sum()),
        "ties": int((result == 0).sum()),
        "losses": int((result == -1).sum()),
        "median_difference": float(np.median(a - b)) if len(a) else np.nan,
        "p_value": float(p),
    }


def best_baseline(wide: pd.DataFrame, metric: str, model: str = MODEL) -> str | None:
    """The baseline with the best median of ``metric`` over ``wide``'s conditions (a
    `conditions` frame), among those that score the most of the conditions ``model``
    scores (a baseline of combinations alone is not picked to stand for every condition);
    on a tie the first in `METHODS` order. None without a baseline."""
    if metric not in wide.columns.get_level_values(0):
        return None
    scores = wide[metric]
    found = scores[[m for m in scores.columns if _is_baseline(m, model)]]
    if model in scores:
        found = found[scores[model].notna()]
    covered = found.notna().sum()
    found = found.loc[:, covered == covered.max()].median().dropna() if len(covered) else covered
    if found.empty:
        return None
    return found.idxmax() if higher_is_better(metric) else found.idxmin()


def _is_baseline(method: str, model: str = MODEL) -> bool:
    return method not in (model, MODEL, NOISE, *ABLATIONS)


def paired(
    frame: pd.DataFrame,
    *,
    method: str = MODEL,
    split: str = "test",
    cells: str = PER_CONTROL,
    seed: int = 0,
) -> pd.DataFrame:
    """``method`` against each baseline and against ``best`` (`best_baseline`, named in
    ``best_of``), per (dataset if present, baseline, metric, effect): `compare`'s columns.
    ``effect`` "all" counts every condition; "clear" and "small" rows appear where the
    noise floor sorted some conditions into them; a pair with no condition scored by both
    (control's undefined ``pearson_delta``) has no row. Nothing here is random: ``seed``
    is accepted so that `medians` and `paired` take the same arguments."""
    del seed
    rows = []
    for dataset, wide in _by_dataset(conditions(frame, split=split, cells=cells)):
        for metric in wide.columns.get_level_values(0).unique().drop("effect"):
            if method in wide[metric]:
                found = _paired_rows(wide, metric, method)
                rows += found if dataset is None else [{"dataset": dataset, **r} for r in found]
    columns = ["baseline", "best_of", "metric", "effect", "n", "wins", "ties", "losses"]
    columns += ["median_difference", "p_value"]
    return pd.DataFrame(rows, columns=(["dataset"] if "dataset" in frame else []) + columns)


def _paired_rows(wide: pd.DataFrame, metric: str, method: str) -> list[dict]:
    effect = wide[("effect", "")]
    best = best_baseline(wide, metric, method)
    against = [(b, b) for b in wide[metric].columns if _is_baseline(b, method)]
    rows = []
    for baseline, source in [*against, *([(BEST, best)] if best else [])]:
        for name in EFFECTS:
            mask = effect.notna() if name == "all" else effect == name
            if not mask.any():
                continue
            scores = compare(
                wide.loc[mask, (metric, method)],
                wide.loc[mask, (metric, source)],
                higher=higher_is_better(metric),
            )
            if scores["n"]:
                best_of = source if baseline == BEST else None
                rows.append(
                    {"baseline": baseline, "best_of": best_of, "metric": metric, "effect": name}
                    | scores
                )
    return rows


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records"))  # NaN -> null, numpy -> Python


def summarise(frame: pd.DataFrame, *, method: str = MODEL, n_boot: int = 1000, seed: int = 0):
    """Everything, JSON-ready: ``{"rules": RULES, "directions": {metric: "higher"|"lower"},
    "splits": {split: {cells: {"conditions": n, "medians": [...], "paired": [...]}}}}``
    for every split and cell count present."""
    f = normalise(frame)
    metrics = order(f.loc[f["method"] != NOISE, "metric"])
    out = {
        "rules": RULES,
        "directions": {m: "higher" if higher_is_better(m) else "lower" for m in metrics},
        "splits": {},
    }
    for split in splits(f):
        for cells in cell_counts(f[f["split"] == split]):
            args = {"split": split, "cells": cells, "seed": seed}
            out["splits"].setdefault(split, {})[cells] = {
                "conditions": int(len(conditions(f, split=split, cells=cells))),
                "medians": _records(medians(f, n_boot=n_boot, **args)),
                "paired": _records(paired(f, method=method, **args)),
            }
    return out


def write(frame: pd.DataFrame, out_dir: str | Path, **options) -> tuple[Path, Path]:
    """Write `summarise` to ``out_dir/report.json`` and its tables, long, with ``table``,
    ``split`` and ``cells`` columns, to ``out_dir/report.csv`` (each atomically)."""
    from .model import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(frame, **options)
    parts = [
        pd.DataFrame(result[table]).assign(table=table, split=split, cells=cells)
        for split, by_cells in summary["splits"].items()
        for cells, result in by_cells.items()
        for table in ("medians", "paired")
    ]
    long = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    first = [c for c in ("table", "split", "cells") if c in long]
    long = long[first + [c for c in long.columns if c not in first]]
    paths = out_dir / "report.json", out_dir / "report.csv"
    atomic_write_text(paths[0], json.dumps(summary, indent=2))
    atomic_write_text(paths[1], long.to_csv(index=False))
    return paths


# ------------------------------------------------------------------ tables to read
def arrow(metric: str) -> str:
    """``metric`` with ↑ (higher is better) or ↓."""
    return f"{metric} {'↑' if higher_is_better(metric) else '↓'}"


def median_table(table: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """`medians` as text, "median [lo, hi]": index (dataset if present,) method, one column
    per metric (`arrow`), Departures first."""
    metrics = [m for m in (metrics or order(table["metric"])) if m in set(table["metric"])]
    index = [c for c in ("dataset", "method") if c in table]
    shown = table[table["metric"].isin(metrics)].assign(
        text=lambda t: [
            f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in t[["median", "lo", "hi"]].to_numpy()
        ]
    )
    wide = shown.pivot(index=index, columns="metric", values="text")
    rank = {m: i for i, m in enumerate(order(table["method"]))}
    wide = wide.sort_index(key=lambda level: level.map(rank) if level.name == "method" else level)
    return wide[metrics].fillna("–").rename(columns=arrow).rename_axis(columns=None)


def wins_table(table: pd.DataFrame, metrics=None, *, effect: str = "all") -> pd.DataFrame:
    """`paired` as text, "wins/ties/losses (p)": index (dataset if present,) baseline, one
    column per metric (`arrow`); ``best`` rows name the baseline they stand for."""
    rows = table[table["effect"] == effect]
    metrics = [m for m in (metrics or order(rows["metric"])) if m in set(rows["metric"])]
    rows = rows[rows["metric"].isin(metrics)].copy()
    rows["baseline"] = np.where(
        rows["baseline"] == BEST, "best (" + rows["best_of"].fillna("") + ")", rows["baseline"]
    )
    rows["text"] = [
        f"{r.wins}/{r.ties}/{r.losses}" + ("" if np.isnan(r.p_value) else f" (p={r.p_value:.2g})")
        for r in rows.itertuples()
    ]
    index = [c for c in ("dataset", "baseline") if c in rows]
    wide = rows.pivot_table(
        index=index, columns="metric", values="text", aggfunc="first", sort=False
    )
    wide = wide[[m for m in metrics if m in wide]].fillna("–")
    return wide.rename(columns=arrow).rename_axis(columns=None)


def pipe(table: pd.DataFrame) -> str:
    head = [*table.index.names, *table.columns]
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join(map(str, [*key, *row])) + " |")
    return "\n".join(lines)


def markdown(
    frame: pd.DataFrame,
    *,
    method: str = MODEL,
    split: str = "test",
    cells: str = PER_CONTROL,
    metrics=KEY_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
) -> str:
    """Markdown for a benchmark's output: per dataset, a table of methods x metrics
    ("median [lo, hi]"), then ``method``'s wins/ties/losses (Wilcoxon p) against every
    baseline and ``best``, for every effect size present."""
    args = {"split": split, "cells": cells, "seed": seed}
    meds, pairs = medians(frame, n_boot=n_boot, **args), paired(frame, method=method, **args)
    metrics = [m for m in metrics if m in set(meds["metric"])] or None
    out, note = [], f"Median over conditions [{RULES['interval']}]; ↑ higher / ↓ lower is better."
    for name in meds["dataset"].unique() if "dataset" in meds else [None]:
        sub = meds if name is None else meds[meds["dataset"] == name].drop(columns="dataset")
        title = f"### {name or 'Evaluation'}: {split}, cells {cells}"
        out += [title, "", pipe(median_table(sub, metrics)), "", note, ""]
    for effect in EFFECTS:
        if (pairs["effect"] == effect).any():
            title = f"### {method}: wins/ties/losses (Wilcoxon p), {effect} effects"
            out += [title, "", pipe(wins_table(pairs, metrics, effect=effect)), ""]
    return "\n".join(out)
