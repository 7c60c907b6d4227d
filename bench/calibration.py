"""In-distribution calibration and held-out quality of the default model on the real datasets.

    python bench/calibration.py [--seeds 0,1,2] [--datasets perturbench,kang,zhao]
                                [--set section.key=value ...] [--out bench/out/calibration]
                                [--threads N] [--refit-responders]

For each dataset and seed: train Departures with the default settings (``--set`` overrides
one, e.g. ``--set ot.epsilon=0.05``: how each change of the method was measured), then

* calibration (``eval/calibration.csv``): every training and held-out condition predicted
  from its own control cells, against the unchanged controls and the observed cells'
  half-vs-half noise floor, with active genes, total expression and variance ratios;
* held-out quality (``eval/metrics.csv``) against ``control``, ``mean_shift`` and
  ``pooled_perturbed``.

Prints two tables: the calibration medians per dataset (mean over seeds) and the held-out
medians per dataset and method (mean ± sd over seeds). The split of each dataset is the one
of ``bench/quality.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DATA, DATASETS, format_table  # noqa: E402

from departures_core import calibration, evaluate, io, responders, runs  # noqa: E402
from departures_core.config import RunConfig  # noqa: E402

HELD_OUT_COLUMNS = ("e_distance", "emd", "e_distance_de20", "activation_pcc", "pearson_delta_de20")
BASELINES = ("control", "mean_shift", "pooled_perturbed")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def with_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        part = getattr(config, section)
        config = config.replace(
            **{section: dataclasses.replace(part, **{name: parse_value(value)})}
        )
    return config


def run_one(name: str, seed: int, out: Path, overrides: list[str], refit: bool = False):
    file, data_cfg = DATASETS[name]
    config = with_overrides(RunConfig(data=data_cfg, seed=seed), overrides).check()
    run_dir = out / f"{name}-seed{seed}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (run_dir / "model.pt").exists():
            start = time.perf_counter()
            runs.train(io.read(DATA / file), config, run_dir, progress_bar=False)
            seconds = time.perf_counter() - start
        else:
            seconds = float(pd.read_csv(run_dir / "history.csv")["seconds"].iloc[-1])
        run = runs.open_run(run_dir)
        sampling = [o for o in overrides if o.startswith(("bridge.onoff=", "bridge.transfer="))]
        if sampling:  # a sampling setting also applies to a run trained before
            run.model.config = with_overrides(run.model.config, sampling)
        if refit:
            responders.refit(run, device="cpu")
        calib = evaluate.calibrate_run(run, seed=seed, progress=False)
        ev = evaluate.evaluate_run(run, seed=seed, progress=False)
    ev.save(run_dir / "eval")
    calib.to_csv(run_dir / "eval" / "calibration.csv", index=False)
    return (
        calib.assign(dataset=name, seed=seed),
        ev.metrics.assign(dataset=name, seed=seed),
        seconds,
    )


def calibration_table(calib: pd.DataFrame) -> str:
    lines = [
        "| dataset | conditions | e_distance: model | bridges alone | control | noise floor "
        "| null: model "
        "| null: control | total bias | variance ratio | active genes pred / obs "
        "| mean error: model / control |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, split), g in calib.groupby(["dataset", "split"], sort=False):
        per_seed = []
        for _, s in g.groupby("seed"):
            null = s[s["e_distance_control"] < calibration.NULL_EFFECT]
            med = s.median(numeric_only=True)
            per_seed.append(
                {
                    **med.to_dict(),
                    "null_model": null["e_distance"].median() if len(null) else np.nan,
                    "null_control": null["e_distance_control"].median() if len(null) else np.nan,
                    "n": len(s),
                    "n_null": len(null),
                }
            )
        m = pd.DataFrame(per_seed).mean()
        lines.append(
            f"| {dataset} {split} | {m['n']:.0f} ({m['n_null']:.0f} null) | {m['e_distance']:.3f} "
            f"| {m['e_distance_bridges']:.3f} "
            f"| {m['e_distance_control']:.3f} | {m['noise_floor']:.3f} | {m['null_model']:.3f} "
            f"| {m['null_control']:.3f} | {m['total_bias']:+.1%} | {m['variance_ratio']:.2f} "
            f"| {m['active_genes_pred']:.1f} / {m['active_genes_obs']:.1f} "
            f"| {m['mean_error']:.4f} / {m['mean_error_control']:.4f} |"
        )
    return "\n".join(lines)


def held_out_table(long: pd.DataFrame, times: dict) -> str:
    medians = (
        long[long["metric"].isin(HELD_OUT_COLUMNS)]
        .groupby(["dataset", "seed", "method", "metric"])["value"]
        .median()
        .unstack("metric")
    )
    return format_table(medians.reset_index(), times, HELD_OUT_COLUMNS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--set", action="append", default=[], help="override: section.key=value")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "calibration"))
    ap.add_argument("--threads", type=int, help="torch threads (several runs at once: 1)")
    ap.add_argument(
        "--refit-responders",
        action="store_true",
        help="runs already trained: fit their non-responders again before evaluating",
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    calibs, longs, times = [], [], {}
    for name in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            calib, long, seconds = run_one(name, seed, out, args.set, args.refit_responders)
            calibs.append(calib)
            longs.append(long)
            times.setdefault(name, []).append(seconds)
            print(f"done {name} seed {seed} ({seconds:.0f} s training)", file=sys.stderr)
    calib, long = pd.concat(calibs), pd.concat(longs)
    order = {m: i for i, m in enumerate(evaluate.METHODS)}
    long = long.sort_values("method", key=lambda s: s.map(order), kind="stable")
    print(calibration_table(calib))
    print()
    print(held_out_table(long, times))


if __name__ == "__main__":
    main()
