"""How much of `pooled_perturbed`'s EMD comes from its sample size.

    python bench/pooled_size.py [--out bench/out/calibration] [--datasets perturbench]

The pool has up to 2,000 cells; the controls, and so the prediction (one cell per control
cell), often have far fewer. The 1-D Wasserstein distance between two samples shrinks as
they grow, so a large pool scores better on EMD without being closer in distribution. For
every held-out condition of the runs that `bench/calibration.py` trained, this prints the
pool's EMD at its own size and drawn down to the number of control cells (mean of 5 draws),
next to the controls' and Departures' (from ``eval/metrics.csv``): medians over conditions,
mean over seeds.
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
        scored = scored[(scored["metric"] == "emd") & (scored["method"] == "departures")]
        for cond in data.conditions:
            if not cond.held_out or len(cond.perturbed) < 10:
                continue
            obs, pool, n = data.x[cond.perturbed], pooled(cond), len(cond.control)
            drawn = [
                metrics.emd(pool[rng.choice(len(pool), min(n, len(pool)), replace=False)], obs)
                for _ in range(args.draws)
            ]
            ours = scored[
                (scored["perturbation"] == cond.perturbation)
                & (scored["cell_type"] == cond.cell_type)
            ]["value"]
            rows.append(
                dict(
                    dataset=name,
                    seed=int(seed),
                    cells=n,
                    pooled=metrics.emd(pool, obs),
                    pooled_at_control_size=float(np.mean(drawn)),
                    control=metrics.emd(data.x[cond.control], obs),
                    departures=float(ours.iloc[0]) if len(ours) else np.nan,
                )
            )
    table = pd.DataFrame(rows)
    if table.empty:
        sys.exit(f"No evaluated runs in {args.out}: run bench/calibration.py first.")
    cols = ["cells", "pooled", "pooled_at_control_size", "control", "departures"]
    medians = table.groupby(["dataset", "seed"])[cols].median().groupby("dataset").mean()
    print(
        "| dataset | control cells | pooled_perturbed | pooled at control size "
        "| control | departures |"
    )
    print("|---|---|---|---|---|---|")
    for dataset, r in medians.iterrows():
        print(
            f"| {dataset} | {r['cells']:.0f} | {r['pooled']:.5f} | "
            f"{r['pooled_at_control_size']:.5f} | {r['control']:.5f} | {r['departures']:.5f} |"
        )


if __name__ == "__main__":
    main()
