"""How much of a held-out median is the sampling draw: the runs of `bench/calibration.py`
(or `bench/quality.py`) scored again with other sampling seeds.

    python bench/draws.py [--out bench/out/calibration] [--datasets perturbench,kang,zhao]
                          [--draws 2] [--threads 1]

The bridges and the draw of non-responders are random, so one run's median over its 11–14
held-out conditions moves with the sampling seed alone (on PerturBench, by up to 0.05 in
e_distance). Each run in ``--out`` is scored with sampling seeds ``seed + 1000 k``,
k = 0 .. draws − 1. Draw 0 is the run's own ``eval/metrics.csv`` when it exists; the others
are kept as ``eval/metrics_draw{k}.csv`` and reused. This prints, per dataset, Departures'
medians averaged over draws and seeds, how far apart the draws of one run are (mean over
runs of max − min), and the baselines (which do not sample). Compare two versions of the
model on the same draws, not on one.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from departures_core import evaluate, runs  # noqa: E402

COLUMNS = ("e_distance", "emd", "e_distance_de20", "activation_pcc", "pearson_delta_de20")
DRAW_SEED = 1000  # sampling seed of draw k: the run's seed + k * DRAW_SEED


def draw_metrics(run_dir: Path, seed: int, k: int) -> pd.DataFrame:
    """Departures' per-condition metrics of draw ``k`` of one run (scored when missing)."""
    path = run_dir / "eval" / ("metrics.csv" if k == 0 else f"metrics_draw{k}.csv")
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = runs.open_run(run_dir)
            predictor = evaluate.model_predictor(run, seed=seed + k * DRAW_SEED)
            scored = evaluate.evaluate(run.data, {"departures": predictor}, progress=False)
        path.parent.mkdir(exist_ok=True)
        scored.metrics.to_csv(path, index=False)
    return pd.read_csv(path)


def medians(frame: pd.DataFrame) -> pd.DataFrame:
    """Median over conditions of each metric, per method (rows) and metric (columns)."""
    frame = frame[frame["metric"].isin(COLUMNS)]
    return frame.groupby(["method", "metric"])["value"].median().unstack()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "calibration"))
    ap.add_argument("--datasets", default="perturbench,kang,zhao")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for run_dir in sorted(Path(args.out).glob("*-seed*")):
        match = re.match(r"(\w+)-seed(\d+)$", run_dir.name)
        if not match or match[1] not in args.datasets.split(","):
            continue
        if not (run_dir / "model.pt").exists():
            continue
        name, seed = match[1], int(match[2])
        for k in range(args.draws):
            scored = medians(draw_metrics(run_dir, seed, k))
            for method, values in scored.iterrows():
                if method == "departures" or k == 0:
                    rows.append(dict(dataset=name, seed=seed, draw=k, method=method, **values))
            print(f"done {run_dir.name} draw {k}", file=sys.stderr)
    if not rows:
        sys.exit(f"No trained runs in {args.out}: run bench/calibration.py first.")
    table = pd.DataFrame(rows)
    ours = table[table["method"] == "departures"]
    spread = (
        (ours.groupby(["dataset", "seed"])[list(COLUMNS)].agg(lambda v: v.max() - v.min()))
        .groupby("dataset")
        .mean()
    )
    mean = table.groupby(["dataset", "method"])[list(COLUMNS)].mean()
    draws = ours.groupby("dataset")["draw"].nunique()
    print(f"| dataset | method | {' | '.join(COLUMNS)} |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for (dataset, method), values in mean.iterrows():
        label = f"departures, {draws[dataset]} draws" if method == "departures" else method
        cells = " | ".join("—" if pd.isna(v) else f"{v:.4g}" for v in values)
        print(f"| {dataset} | {label} | {cells} |")
        if method == "departures":
            cells = " | ".join(f"{v:.3g}" for v in spread.loc[dataset])
            print(f"| {dataset} | departures, max − min between draws | {cells} |")


if __name__ == "__main__":
    main()
