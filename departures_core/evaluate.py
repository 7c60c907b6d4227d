"""Score held-out conditions: Departures against baselines and ablations (DESIGN §3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import diagnostics, metrics
from .baseline_set import (  # noqa: F401  (explore and the tests call them from here)
    TEST,
    baseline_predictors,
    mean_shift_predictor,
    pooled_perturbed_predictor,
)
from .data import Condition, PerturbationData
from .model import atomic_write_text, condition_rows

METHODS = (
    "departures",
    "control",
    "mean_shift",
    "pooled_perturbed",
    "additive",
    "linear",
    "nearest",
    "random_pairing",
    "no_discrete",
)
MIN_CELLS = 10
# the Virtual Cell Challenge's three metrics and score (`celleval`), when they were computed
VCC_COLUMNS = ("overlap_at_N", "discrimination_score_l1", "mae", "vcc_score")

Predictor = Callable[[Condition], np.ndarray]


VALIDATION = "validation"  # `TEST` (from `baseline_set`): the held-out conditions
PER_CONTROL = "per_control"  # one predicted cell per observed control cell
N_FIXED = 200  # the other sample size scored: what a user asking for 200 cells gets
NOISE_FLOOR = "noise_floor"  # e_distance between two halves of the observed cells
# the long format of ``eval/metrics.csv``
COLUMNS = ("method", "perturbation", "cell_type", "metric", "value", "split", "cells")


@dataclass
class Evaluation:
    """Long-format scores plus the conditions that were skipped and why.

    ``metrics`` columns: method, perturbation, cell_type, metric, value, split (`TEST`:
    held-out conditions, for reporting; `VALIDATION`: training perturbations left out of
    training, where settings are chosen) and cells (`PER_CONTROL`, or ``"200"`` for a
    model's 200 predicted cells). ``settings``: the baselines' settings chosen on
    validation."""

    metrics: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def reported(self) -> pd.DataFrame:
        """The test rows of one predicted cell per control cell (older files: all rows)."""
        m = self.metrics
        keep = np.ones(len(m), dtype=bool)
        if "split" in m:
            keep &= (m["split"] == TEST).to_numpy()
        if "cells" in m:
            keep &= (m["cells"].astype(str) == PER_CONTROL).to_numpy()
        return m[keep & (m["method"] != NOISE_FLOOR).to_numpy()]

    def summary(self) -> dict:
        """``{method: {metric: {"mean": .., "median": .., "n": ..}}}`` of the test conditions."""
        out: dict = {}
        for (method, metric), values in self.reported().groupby(["method", "metric"])["value"]:
            v = values.dropna()
            out.setdefault(method, {})[metric] = {
                "mean": float(v.mean()) if len(v) else None,
                "median": float(v.median()) if len(v) else None,
                "n": int(len(v)),
            }
        return out

    def table(
        self,
        columns=(
            "e_distance",
            "e_distance_de20",
            "emd",
            "activation_pcc",
            "pearson_delta_de20",
            *VCC_COLUMNS,
        ),
    ) -> pd.DataFrame:
        """Median per method (rows) and metric (columns); cell-eval's when it was run."""
        wide = self.reported().pivot_table(
            index="method", columns="metric", values="value", aggfunc="median"
        )
        order = [m for m in METHODS if m in wide.index]
        return wide.loc[order, [c for c in columns if c in wide.columns]]

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.csv", self.metrics.to_csv(index=False))
        doc = {"summary": self.summary(), "skipped": self.skipped, "settings": self.settings}
        atomic_write_text(out_dir / "summary.json", json.dumps(doc, indent=2))
        from . import report

        report.write(self.metrics, out_dir)


# A generative model's prediction is a distribution: the distances compare one predicted
# cell per control cell with the observed cells (the sample size of the `control` baseline),
# and the metrics of per-gene means (pearson_delta, activation_pcc) read its mean off
# `MEAN_CELLS` predicted cells, where the bridges' sampling noise averages out (the mean of
# 100 sampled cells of a small condition is noisy; a baseline's mean shift is exact).
MEAN_CELLS = 2000


@dataclass(frozen=True)
class Predicted:
    """A predictor's output with a second, larger sample: ``cells`` (one per control cell,
    for the distances) and ``more`` (`start_rows`, for the means; None: ``cells``), and
    ``fixed``, `N_FIXED` cells scored on their own (None: not scored)."""

    cells: np.ndarray
    more: np.ndarray | None = None
    fixed: np.ndarray | None = None


def start_rows(control: np.ndarray, n_cells: int) -> np.ndarray:
    """``n_cells`` starting cells from the ``control`` rows, each used equally often
    (the first ``len(control)`` are each control row once); the rows themselves when
    there are at least ``n_cells`` of them."""
    control = np.asarray(control)
    return control if n_cells <= len(control) else np.resize(control, n_cells)


def model_predictor(
    run,
    *,
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
    responders: bool = True,
    mean_cells: int = MEAN_CELLS,
) -> Predictor:
    """One predicted cell per control cell of the condition; with fewer control cells than
    ``mean_cells``, also a sample of that many for the means (`Predicted`; 0: never).
    ``responders=False``: the bridges alone, without the run's non-responders."""
    from .runs import simulate_from

    def simulate(cond: Condition, rows: np.ndarray) -> np.ndarray:
        return simulate_from(
            run,
            rows,
            condition_rows([cond]) * len(rows),
            steps=run.model.config.bridge.steps if steps is None else steps,
            seed=seed,
            device=device,
            responders=responders,
        ).prediction

    def predict(cond: Condition) -> np.ndarray | Predicted:
        cells = simulate(cond, cond.control)
        if mean_cells <= 0:
            return cells
        if len(cond.control) >= mean_cells:
            more = None
            fixed = cells[np.linspace(0, len(cells) - 1, N_FIXED).round().astype(int)]
        else:
            # the first `N_FIXED` start rows are those of a request for that many cells
            more = simulate(cond, start_rows(cond.control, max(mean_cells, N_FIXED)))
            fixed = more[:N_FIXED]
        return Predicted(cells, more, fixed)

    return predict


def de_genes(data: PerturbationData, cond: Condition, n: int = 40) -> list[str]:
    """Top DE genes of the observed perturbed cells vs the condition's controls (t-test)."""
    idx = np.concatenate([cond.control, cond.perturbed])
    group = np.array(["control"] * len(cond.control) + ["perturbed"] * len(cond.perturbed))
    sub = ad.AnnData(
        X=data.x[idx],
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=idx.astype(str)),
        var=pd.DataFrame(index=data.genes),
    )
    return metrics.top_de_genes(sub, groupby="group", group="perturbed", reference="control", n=n)


def pooled_means(data: PerturbationData) -> dict[str, np.ndarray]:
    """Per cell type, the mean of its training conditions' perturbed cells (all training
    conditions for a cell type with none): the reference `pearson_delta_pooled` centres on."""
    train = data.train_conditions()
    if not train:
        return {}
    everyone = data.x.mean(np.concatenate([c.perturbed for c in train]))
    out = {}
    for ct in data.cell_types:
        rows = [c.perturbed for c in train if c.cell_type == ct]
        out[ct] = data.x.mean(np.concatenate(rows)) if rows else everyone
    return out


def evaluate(
    data: PerturbationData,
    predictors: dict[str, Predictor],
    *,
    split: str = TEST,
    min_cells: int = MIN_CELLS,
    progress: bool = True,
    seed: int = 0,
) -> Evaluation:
    """Score every held-out (``split="test"``) or validation condition with every predictor.

    The pooled reference of `pearson_delta_pooled` is what the predictors learn from: the
    training conditions, with the validation ones for the test split."""
    from tqdm.auto import tqdm

    records, skipped = [], []
    if split == TEST:
        conditions, pooled = data.heldout_conditions(), pooled_means(data.with_validation_trained())
    else:
        conditions, pooled = data.validation_conditions(), pooled_means(data)

    def add(method, cond, scores, cells=PER_CONTROL):
        records.extend(
            {
                "method": method,
                "perturbation": cond.perturbation,
                "cell_type": cond.cell_type,
                "metric": k,
                "value": v,
                "split": split,
                "cells": cells,
            }
            for k, v in scores.items()
        )

    for cond in tqdm(conditions, desc=f"evaluate ({split})", disable=not progress):
        if len(cond.perturbed) < min_cells or len(cond.control) < 2:
            skipped.append(
                {
                    "perturbation": cond.perturbation,
                    "cell_type": cond.cell_type,
                    "n_cells": int(len(cond.perturbed)),
                    "reason": f"fewer than {min_cells} perturbed cells",
                }
            )
            continue
        obs, ctrl = data.x[cond.perturbed], data.x[cond.control]
        top = de_genes(data, cond)
        score = partial(
            metrics.condition_metrics,
            obs=obs,
            ctrl=ctrl,
            genes=data.genes,
            de_genes=top,
            pooled=pooled.get(cond.cell_type),
        )
        floor = diagnostics.noise_floor(obs, np.random.default_rng([seed, 17]))
        add(NOISE_FLOOR, cond, {"e_distance": floor})
        for method, predict in predictors.items():
            pred = predict(cond)
            if not isinstance(pred, Predicted):
                pred = Predicted(pred)
            add(method, cond, score(pred.cells, means_from=pred.more))
            if pred.fixed is not None:
                add(method, cond, score(pred.fixed), cells=str(N_FIXED))
    return Evaluation(pd.DataFrame(records, columns=list(COLUMNS)), skipped)


ABLATIONS = {
    "random_pairing": {"ot": {"pairing": "random"}},
    "no_discrete": {"bridge": {"discrete": False}},
}


def ablation_config(config, name: str, split):
    """``config`` with one ablation applied and the run's split pinned."""
    import dataclasses

    changes = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in ABLATIONS[name].items()
    }
    data = dataclasses.replace(
        config.data,
        holdout=tuple(split.holdout),
        holdout_fraction=0.0,
        holdout_cell_types=tuple(split.holdout_cell_types),
    )
    return config.replace(data=data, **changes)


def train_ablations(run, *, progress_bar: bool = True) -> dict:
    """Train (or reuse) each ablation in ``RUN_DIR/ablations/<name>``, same data and split."""
    from . import io, keys, runs

    out = {}
    for name in ABLATIONS:
        path = run.path / "ablations" / name
        if not (path / keys.MODEL_FILE).exists():
            cfg = ablation_config(run.config, name, run.model.split)
            adata = io.read(run.path / keys.DATA_FILE)
            runs.train(adata, cfg, path, progress_bar=progress_bar)
        out[name] = runs.open_run(path)
    return out


def run_predictors(
    run,
    *,
    ablations: bool = False,
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    split: str = TEST,
    knowledge=None,
    settings: dict | None = None,
) -> tuple[dict[str, Predictor], dict]:
    """Departures, the baselines and (optionally) the ablations of ``run``, by method name;
    and the baselines' settings (`baseline_predictors`; ``settings`` reuses them)."""
    if steps is not None and steps < 1:
        from .errors import ConfigError

        raise ConfigError(f"--steps must be >= 1, got {steps}.")
    baselines, settings = baseline_predictors(
        run.data, split, seed=seed, knowledge=knowledge, settings=settings
    )
    predictors = {
        "departures": model_predictor(run, seed=seed, steps=steps, device=device),
        **baselines,
    }
    if ablations:
        for name, ablated in train_ablations(run, progress_bar=progress).items():
            predictors[name] = model_predictor(ablated, seed=seed, steps=steps, device=device)
    return predictors, settings


def evaluate_run(
    run,
    *,
    ablations: bool = False,
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    cell_eval: bool = False,
    threads: int = 1,
    knowledge=None,
) -> Evaluation:
    """Departures, the baselines and (optionally) the ablations on the run's held-out (test)
    conditions and, when the run has them, its validation conditions (``split`` column).

    ``cell_eval`` adds cell-eval's metrics (`celleval.METRICS` and ``vcc_score``) of the same
    predicted cells of the test conditions as more rows; ``threads`` are its
    differential-expression threads. ``knowledge``: a gene graph or embedding table (CSV)
    for the `linear` and `nearest` baselines instead of the shipped GO table."""
    from . import celleval

    if cell_eval:  # first: a missing package should not cost the ablations and the sampling
        celleval.require()
    options = dict(
        ablations=ablations,
        seed=seed,
        steps=steps,
        device=device,
        progress=progress,
        knowledge=knowledge,
    )
    predictors, settings = run_predictors(run, **options)
    frames, skipped = [], []
    if run.data.validation_conditions():
        val_predictors, _ = run_predictors(run, **options, split=VALIDATION, settings=settings)
        ev = evaluate(run.data, val_predictors, split=VALIDATION, progress=progress, seed=seed)
        frames.append(ev.metrics)
        skipped += [{**s, "split": VALIDATION} for s in ev.skipped]
    if cell_eval:
        recorder = celleval.Recorder(predictors)
        predictors = recorder.predictors
    ev = evaluate(run.data, predictors, progress=progress, seed=seed)
    frames.insert(0, ev.metrics)
    skipped = ev.skipped + skipped
    if cell_eval:
        extra = celleval.score(run.data, recorder, threads=threads)
        # cell-eval's pearson_delta is ours (the correlation of the mean changes from
        # control): one row per metric, ours, whose model mean is read off `MEAN_CELLS` cells
        extra = extra[~extra["metric"].isin(metrics.METRIC_NAMES)]
        frames.append(extra.assign(split=TEST, cells=PER_CONTROL))
    return Evaluation(pd.concat(frames, ignore_index=True), skipped, settings)


def calibrate_run(
    run, *, seed: int = 0, steps: int | None = None, device: str = "cpu", progress: bool = True
) -> pd.DataFrame:
    """The calibration table (`calibration.calibrate`) of the run's training and held-out
    conditions, with the bridges alone (no non-responders) as ``e_distance_bridges``."""
    from . import calibration

    return calibration.calibrate(
        run.data,
        # in distribution, one prediction per control cell: the table is read against the
        # controls themselves and the observed cells' noise floor
        model_predictor(run, seed=seed, steps=steps, device=device, mean_cells=0),
        bridges=model_predictor(
            run, seed=seed, steps=steps, device=device, responders=False, mean_cells=0
        ),
        seed=seed,
        progress=progress,
    )
