"""Prediction quality on held-out conditions of the real datasets in ../shared/data.

    python bench/quality.py [--seeds 0,1,2] [--datasets perturbench,kang,zhao] [--out bench/out]
                            [--reuse-eval]

For each dataset and seed: train Departures and the ablations (random pairing, no
discrete bridge) on one split, score the held-out conditions together with the
`control`, `mean_shift` and `pooled_perturbed` baselines, and print one table: rows =
dataset x method, columns = median over held-out conditions of each metric, as mean ± sd
over seeds, plus the training time. A second table splits the held-out conditions by the
size of their observed effect (the `control` baseline's e_distance: below 0.25 the
perturbed cells are hardly distinguishable from control cells) and gives, for e_distance
and EMD, the medians and how often Departures beats each baseline, and the best of them,
per condition. ``--reuse-eval`` re-prints both tables from the runs and evaluations
already in ``--out`` instead of scoring again.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from departures_core import evaluate, io, runs  # noqa: E402
from departures_core.config import DataConfig, RunConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
COLUMNS = ("e_distance", "e_distance_de20", "emd", "activation_pcc", "pearson_delta_de20")
SMALL_EFFECT = 0.25  # control e_distance below this: the perturbation hardly changes the cells

# One split per dataset, the classic task for each.
DATASETS = {
    "perturbench": (
        "perturbench_devel_norman19_mcfaline23.h5ad",
        DataConfig(
            perturbation_key="condition",
            control="control",
            cell_type_key="cell_type",
            holdout_fraction=0.25,
        ),
    ),  # held-out perturbations (seeded)
    "kang": (
        "kang2018_pbmc_ifnb_scgen_valid.h5ad",
        DataConfig(
            perturbation_key="condition",
            control="control",
            cell_type_key="cell_type",
            holdout_cell_types=("CD4T",),
        ),
    ),  # held-out cell type (scGen / CellOT task)
    "zhao": (
        "zhao2021_gbm_panobinostat.h5ad",
        DataConfig(
            perturbation_key="perturbation",
            control="control",
            cell_type_key="patient_id",
            dose_key="dose_uM",
            holdout_cell_types=("PW034",),
        ),
    ),  # held-out patient
}


def run_one(
    name: str, seed: int, out: Path, epochs: int | None, *, reuse_eval: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Train (or reuse) and score one dataset and seed: (median table, long metrics, train s)."""
    file, data_cfg = DATASETS[name]
    config = RunConfig(data=data_cfg, seed=seed)
    if epochs:
        config = config.replace(train=config.train.__class__(epochs=epochs))
    run_dir = out / f"{name}-seed{seed}"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (run_dir / "model.pt").exists():
            runs.train(io.read(DATA / file), config, run_dir, progress_bar=False)
            train_seconds = time.perf_counter() - start
        else:  # reuse a trained run (to re-score after a sampler change); its logged time
            train_seconds = float(pd.read_csv(run_dir / "history.csv")["seconds"].iloc[-1])
        saved = run_dir / "eval" / "metrics.csv"
        if reuse_eval and saved.exists():
            ev = evaluate.Evaluation(pd.read_csv(saved))
        else:
            run = runs.open_run(run_dir)
            ev = evaluate.evaluate_run(run, ablations=True, seed=seed, progress=False)
            ev.save(run_dir / "eval")
    table = ev.table(COLUMNS)
    table["dataset"], table["seed"] = name, seed
    long = ev.metrics.assign(dataset=name, seed=seed)
    return table.reset_index(), long, train_seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--epochs", type=int, help="override the default epochs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality"))
    ap.add_argument("--reuse-eval", action="store_true", help="re-print saved evaluations")
    args = ap.parse_args()
    out = Path(args.out)
    frames, longs, times = [], [], {}
    for name in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            frame, long, seconds = run_one(name, seed, out, args.epochs, reuse_eval=args.reuse_eval)
            frames.append(frame)
            longs.append(long)
            times.setdefault(name, []).append(seconds)
            print(f"done {name} seed {seed} ({seconds:.0f} s training)", file=sys.stderr)
    scores = pd.concat(frames)
    scores.to_csv(out / "quality_per_seed.csv", index=False)
    print(format_table(scores, times))
    print()
    print(effect_table(pd.concat(longs)))


BASELINES = ("control", "mean_shift", "pooled_perturbed")


def effect_table(metrics: pd.DataFrame, names=("e_distance", "emd")) -> str:
    """Median of each metric per method over held-out conditions (all seeds), split by the
    size of the observed effect (the `control` baseline's e_distance), with the share of
    conditions where Departures beats each baseline and the best of them."""
    wide = metrics[metrics["metric"].isin(names)].pivot_table(
        index=["dataset", "seed", "perturbation", "cell_type"],
        columns=["metric", "method"],
        values="value",
    )
    small = wide[("e_distance", "control")] < SMALL_EFFECT
    effect = np.where(small, f"small (< {SMALL_EFFECT})", f"clear (>= {SMALL_EFFECT})")
    methods = ["departures", *[b for b in BASELINES if ("e_distance", b) in wide.columns]]
    lines = [
        "| dataset | observed effect | conditions | metric | "
        + " | ".join(methods)
        + " | "
        + " | ".join(f"departures < {b}" for b in methods[1:])
        + " | departures < best baseline |",
        "|---|---|---|---|" + "---|" * (2 * len(methods)),
    ]
    for (dataset, kind), g in wide.groupby([wide.index.get_level_values("dataset"), effect]):
        for name in names:
            m = g[name]
            best = m[methods[1:]].min(axis=1)
            lines.append(
                f"| {dataset} | {kind} | {len(g)} | {name} | "
                + " | ".join(f"{m[k].median():.4g}" for k in methods)
                + " | "
                + " | ".join(f"{(m['departures'] < m[b]).mean():.0%}" for b in methods[1:])
                + f" | {(m['departures'] < best).mean():.0%} |"
            )
    return "\n".join(lines)


def format_table(scores: pd.DataFrame, times: dict[str, list[float]], columns=COLUMNS) -> str:
    """Rows dataset x method of per-seed ``scores``: mean ± sd over seeds of each column."""
    cols = [c for c in columns if c in scores.columns]
    lines = [
        "| dataset | method | " + " | ".join(cols) + " | train s |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for (dataset, method), group in scores.groupby(["dataset", "method"], sort=False):
        cells = [
            f"{group[c].mean():.3g} ± {group[c].std(ddof=0):.2g}" if group[c].notna().any() else "—"
            for c in cols
        ]
        t = f"{np.mean(times[dataset]):.0f}" if method == "departures" else ""
        lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + f" | {t} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
