"""Prediction quality by K-fold leave-perturbations-out cross-validation on ../shared/data.

    python bench/quality.py --folds 4 [--datasets perturbench,kang,zhao] [--seed 0]
                            [--out bench/out/quality] [--fold I] [--ablations] [--reuse-eval]

Each dataset is cut into K seeded folds, written to ``OUT/<dataset>/folds.json``:
PerturBench by perturbation (each perturbation is held out in exactly one fold), Kang and
Zhao by cell type (one held-out cell type, donor or patient per fold). In every fold the
run keeps 20 % of its training perturbations (training cell types on Kang and Zhao) out of
the network's training as validation (`DataConfig.validation_fraction`); the post-hoc fits
for unseen perturbations and the baselines' settings are chosen on them, never on the
fold's test conditions. Departures and every baseline (``control``, ``mean_shift``,
``pooled_perturbed``, ``additive``, ``linear``, ``nearest``; with ``--ablations`` also
``random_pairing`` and ``no_discrete``) are scored on the same cells.

Printed per dataset, on the test folds: the median over conditions of each metric with a
bootstrap 95 % interval, and Departures' wins / ties / losses against each baseline with a
paired Wilcoxon p-value, split by effect size (`departures_core.report`); then the same
medians on validation. Written: ``OUT/quality_metrics.csv`` (every score, long format, with
dataset, fold, split and cells columns) and ``OUT/report.json`` / ``OUT/report.csv``.

``--fold I`` trains and scores fold I only (run two such processes side by side on two
cores, one torch thread each); ``--reuse-eval`` re-prints the tables from what ``OUT``
holds.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from departures_core import evaluate, folds, io, runs  # noqa: E402
from departures_core.config import DataConfig, RunConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

# file, the data's keys, what a fold holds out
DATASETS = {
    "perturbench": (
        "perturbench_devel_norman19_mcfaline23.h5ad",
        DataConfig(perturbation_key="condition", control="control", cell_type_key="cell_type"),
        "perturbation",
    ),
    "kang": (
        "kang2018_pbmc_ifnb_scgen_valid.h5ad",
        DataConfig(perturbation_key="condition", control="control", cell_type_key="cell_type"),
        "cell_type",
    ),  # a held-out cell type per fold (the scGen / CellOT task)
    "zhao": (
        "zhao2021_gbm_panobinostat.h5ad",
        DataConfig(
            perturbation_key="perturbation",
            control="control",
            cell_type_key="patient_id",
            dose_key="dose_uM",
        ),
        "cell_type",
    ),  # a held-out patient per fold
}


def dataset_folds(name: str, adata, k: int, seed: int, out: Path) -> list[folds.Fold]:
    """The dataset's folds, made once and written to ``OUT/<name>/folds.json``."""
    path = out / name / "folds.json"
    if path.exists():
        return folds.read(path)
    _, cfg, by = DATASETS[name]
    obs = adata.obs
    perts = sorted(set(obs[cfg.perturbation_key].astype(str)) - {cfg.control})
    cell_types = sorted(set(obs[cfg.cell_type_key].astype(str)))
    made = folds.make_folds(perts, cell_types, k, by=by, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.write(made, path, dataset=name, by=by, seed=seed)
    return made


def run_fold(
    name, adata, fold, seed, out, *, ablations, reuse_eval, train_only=False
) -> tuple[pd.DataFrame | None, float]:
    """Train (or reuse) and score one fold: (long metrics with dataset and fold, train s)."""
    _, cfg, _ = DATASETS[name]
    config = RunConfig(data=folds.fold_config(cfg, fold), seed=seed)
    run_dir = out / name / f"fold{fold.index}"
    saved = run_dir / "eval" / "metrics.csv"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (run_dir / "model.pt").exists():
            runs.train(adata, config, run_dir, progress_bar=False)
        seconds = float(pd.read_csv(run_dir / "history.csv")["seconds"].iloc[-1])
        if train_only:
            return None, seconds
        if reuse_eval and saved.exists():
            metrics = pd.read_csv(saved)
        else:
            run = runs.open_run(run_dir)
            ev = evaluate.evaluate_run(run, ablations=ablations, seed=seed, progress=False)
            ev.save(run_dir / "eval")
            metrics = ev.metrics
    print(f"done {name} fold {fold.index} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return metrics.assign(dataset=name, fold=fold.index), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=4, help="K: folds per dataset")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seed", type=int, default=0, help="seeds the folds and the trainings")
    ap.add_argument("--fold", type=int, help="run this fold only")
    ap.add_argument("--ablations", action="store_true", help="also random_pairing, no_discrete")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "quality"))
    ap.add_argument("--reuse-eval", action="store_true", help="re-print saved evaluations")
    ap.add_argument("--train-only", action="store_true", help="train the folds, score nothing")
    args = ap.parse_args()
    out = Path(args.out)
    frames, times = [], {}
    for name in args.datasets.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = io.read(DATA / DATASETS[name][0])
        for fold in dataset_folds(name, adata, args.folds, args.seed, out):
            if args.fold is not None and fold.index != args.fold:
                continue
            metrics, seconds = run_fold(
                name,
                adata,
                fold,
                args.seed,
                out,
                ablations=args.ablations,
                reuse_eval=args.reuse_eval,
                train_only=args.train_only,
            )
            frames.append(metrics)
            times.setdefault(name, []).append(seconds)
    if args.fold is not None or args.train_only:
        return  # one fold of a parallel run: the tables come with --reuse-eval
    from departures_core import report

    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(out / "quality_metrics.csv", index=False)
    report.write(frame, out)
    for name in args.datasets.split(","):
        part = frame[frame["dataset"] == name]
        n_test = part.loc[part["split"] == "test", ["perturbation", "cell_type"]].drop_duplicates()
        print(f"\n## {name}: {len(n_test)} test conditions in {args.folds} folds", end="")
        print(f" (training {sum(times[name]):.0f} s in all)\n")
        print(report.markdown(part))
        print(f"\n### {name}: validation (where settings are chosen), cells per_control\n")
        valid = report.medians(part, split="validation")
        print(report.pipe(report.median_table(valid.drop(columns="dataset"), report.KEY_METRICS)))
        fixed = report.medians(part, cells="200")
        fixed = fixed[fixed["method"] == "departures"].assign(method="departures, 200 cells")
        print(f"\n### {name}: test, Departures asked for 200 cells\n")
        print(report.pipe(report.median_table(fixed.drop(columns="dataset"), report.KEY_METRICS)))


if __name__ == "__main__":
    main()
