"""How much of `pooled_perturbed`'s EMD and activation PCC comes from its sample size.

    python bench/pooled_size.py [--out bench/out/calibration] [--datasets perturbench]

The pool has up to 2,000 cells; the controls, and so the prediction (one cell per control
cell), often have far fewer. The 1-D Wasserstein distance between two samples shrinks as
they grow, so a large pool scores better on EMD without being closer in distribution; and the
fraction of active cells per gene of 2,000 cells is a less noisy estimate than that of 100,
so its Pearson r with the observed fractions (``activation_pcc``) is higher. For every
held-out condition of the runs that `bench/calibration.py` trained, this prints both for the
pool at its own size and drawn down to the number of control cells (mean of 5 draws), next
to the controls' and Departures' (from ``eval/metrics.csv``): medians over conditions, mean
over seeds.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from departures_core import evaluate, metrics, runs  # noqa: E402

METRICS = ("emd", "activation_pcc")  # lower, higher is better


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "calibration"))
    ap.add_argument("--datasets", default="perturbench")
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for run_dir in sorted(Path(args.out).glob("*-seed*")):
        name, seed = re.match(r"(\w+)-seed(\d+)$", run_dir.name).groups()
        if name not in args.datasets.split(",") or not (run_dir / "eval").exists():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = runs.open_run(run_dir)
        data, rng = run.data, np.random.default_rng(0)
        pooled = evaluate.pooled_perturbed_predictor(data)
        scored = pd.read_csv(run_dir / "eval" / "metrics.csv")
        ours = (
            scored[scored["method"] == "departures"]
            .set_index(["metric", "perturbation", "cell_type"])["value"]
            .to_dict()
        )
        for cond in data.conditions:
            if not cond.held_out or len(cond.perturbed) < 10:
                continue
            obs, pool, n = data.x[cond.perturbed], pooled(cond), len(cond.control)
            drawn = [
                pool[rng.choice(len(pool), min(n, len(pool)), replace=False)]
                for _ in range(args.draws)
            ]
            for metric in METRICS:
                score = getattr(metrics, metric)
                rows.append(
                    dict(
                        dataset=name,
                        seed=int(seed),
                        metric=metric,
                        cells=n,
                        pooled=score(pool, obs),
                        pooled_at_control_size=float(np.mean([score(d, obs) for d in drawn])),
                        control=score(data.x[cond.control], obs),
                        departures=ours.get((metric, cond.perturbation, cond.cell_type), np.nan),
                    )
                )
    table = pd.DataFrame(rows)
    if table.empty:
        sys.exit(f"No evaluated runs in {args.out}: run bench/calibration.py first.")
    cols = ["cells", "pooled", "pooled_at_control_size", "control", "departures"]
    medians = (
        table.groupby(["dataset", "metric", "seed"])[cols]
        .median()
        .groupby(["dataset", "metric"])
        .mean()
    )
    print(
        "| dataset | metric | control cells | pooled_perturbed | pooled at control size "
        "| control | departures |"
    )
    print("|---|---|---|---|---|---|---|")
    for (dataset, metric), r in medians.iterrows():
        print(
            f"| {dataset} | {metric} | {r['cells']:.0f} | {r['pooled']:.5f} | "
            f"{r['pooled_at_control_size']:.5f} | {r['control']:.5f} | {r['departures']:.5f} |"
        )


if __name__ == "__main__":
    main()
