"""Score held-out conditions: Departures against baselines and ablations (DESIGN §3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import metrics
from .data import Condition, PerturbationData
from .model import atomic_write_text, condition_rows

METHODS = (
    "departures",
    "control",
    "mean_shift",
    "pooled_perturbed",
    "random_pairing",
    "no_discrete",
)
MIN_CELLS = 10
# the Virtual Cell Challenge's three metrics and score (`celleval`), when they were computed
VCC_COLUMNS = ("overlap_at_N", "discrimination_score_l1", "mae", "vcc_score")

Predictor = Callable[[Condition], np.ndarray]


@dataclass
class Evaluation:
    """Long-format scores plus the conditions that were skipped and why."""

    metrics: pd.DataFrame  # columns: method, perturbation, cell_type, metric, value
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """``{method: {metric: {"mean": .., "median": .., "n": ..}}}``."""
        out: dict = {}
        for (method, metric), values in self.metrics.groupby(["method", "metric"])["value"]:
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
        wide = self.metrics.pivot_table(
            index="method", columns="metric", values="value", aggfunc="median"
        )
        order = [m for m in METHODS if m in wide.index]
        return wide.loc[order, [c for c in columns if c in wide.columns]]

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.csv", self.metrics.to_csv(index=False))
        atomic_write_text(
            out_dir / "summary.json",
            json.dumps({"summary": self.summary(), "skipped": self.skipped}, indent=2),
        )


def mean_shift_predictor(data: PerturbationData) -> Predictor:
    """Control + the perturbation's own mean shift if it was seen in training (in another
    cell type), else the mean shift over training conditions of the same cell type (all
    training conditions when that cell type has none)."""
    shifts = {
        (c.perturbation, c.cell_type): data.x.mean(c.perturbed) - data.x.mean(c.control)
        for c in data.train_conditions()
    }

    def predict(cond: Condition) -> np.ndarray:
        own = [s for (p, _), s in shifts.items() if p == cond.perturbation]
        same_ct = [s for (_, ct), s in shifts.items() if ct == cond.cell_type]
        pool = own or same_ct or list(shifts.values())
        return data.x[cond.control] + np.mean(pool, axis=0)

    return predict


def pooled_perturbed_predictor(data: PerturbationData, max_cells: int = 2000) -> Predictor:
    """All perturbed cells of the training conditions of the same cell type, pooled (all
    training conditions when that cell type has none); at most ``max_cells`` of them, drawn
    once with a fixed seed. It is what "a perturbed cell of this cell type" looks like."""
    rng = np.random.default_rng(0)
    train = data.train_conditions()
    everyone = np.concatenate([c.perturbed for c in train])

    def predict(cond: Condition) -> np.ndarray:
        same_ct = [c.perturbed for c in train if c.cell_type == cond.cell_type]
        pool = np.concatenate(same_ct) if same_ct else everyone
        if len(pool) > max_cells:
            pool = np.sort(rng.choice(pool, max_cells, replace=False))
        return data.x[pool]

    return predict


# A generative model's prediction is a distribution: the distances compare one predicted
# cell per control cell with the observed cells (the sample size of the `control` baseline),
# and the metrics of per-gene means (pearson_delta, activation_pcc) read its mean off
# `MEAN_CELLS` predicted cells, where the bridges' sampling noise averages out (the mean of
# 100 sampled cells of a small condition is noisy; a baseline's mean shift is exact).
MEAN_CELLS = 2000


@dataclass(frozen=True)
class Predicted:
    """A predictor's output with a second, larger sample: ``cells`` (one per control cell,
    for the distances) and ``more`` (`start_rows`, for the means)."""

    cells: np.ndarray
    more: np.ndarray


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
        if len(cond.control) >= mean_cells:
            return cells
        return Predicted(cells, simulate(cond, start_rows(cond.control, mean_cells)))

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


def evaluate(
    data: PerturbationData,
    predictors: dict[str, Predictor],
    *,
    min_cells: int = MIN_CELLS,
    progress: bool = True,
) -> Evaluation:
    """Score every held-out condition with every predictor."""
    from tqdm.auto import tqdm

    records, skipped = [], []
    conditions = data.heldout_conditions()
    for cond in tqdm(conditions, desc="evaluate", disable=not progress):
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
        for method, predict in predictors.items():
            pred = predict(cond)
            cells, more = (pred.cells, pred.more) if isinstance(pred, Predicted) else (pred, None)
            scores = metrics.condition_metrics(
                cells, obs, ctrl, genes=data.genes, de_genes=top, means_from=more
            )
            records += [
                {
                    "method": method,
                    "perturbation": cond.perturbation,
                    "cell_type": cond.cell_type,
                    "metric": k,
                    "value": v,
                }
                for k, v in scores.items()
            ]
    frame = pd.DataFrame(
        records, columns=["method", "perturbation", "cell_type", "metric", "value"]
    )
    return Evaluation(frame, skipped)


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
) -> dict[str, Predictor]:
    """Departures, the baselines and (optionally) the ablations of ``run``, by method name."""
    if steps is not None and steps < 1:
        from .errors import ConfigError

        raise ConfigError(f"--steps must be >= 1, got {steps}.")
    predictors: dict[str, Predictor] = {
        "departures": model_predictor(run, seed=seed, steps=steps, device=device),
        "control": lambda cond: run.data.x[cond.control],
        "mean_shift": mean_shift_predictor(run.data),
        "pooled_perturbed": pooled_perturbed_predictor(run.data),
    }
    if ablations:
        for name, ablated in train_ablations(run, progress_bar=progress).items():
            predictors[name] = model_predictor(ablated, seed=seed, steps=steps, device=device)
    return predictors


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
) -> Evaluation:
    """Departures, the baselines and (optionally) the ablations on the run's held-out conditions.

    ``cell_eval`` adds cell-eval's metrics (`celleval.METRICS` and ``vcc_score``) of the same
    predicted cells as more rows; ``threads`` are its differential-expression threads."""
    from . import celleval

    if cell_eval:  # first: a missing package should not cost the ablations and the sampling
        celleval.require()
    predictors = run_predictors(
        run, ablations=ablations, seed=seed, steps=steps, device=device, progress=progress
    )
    if not cell_eval:
        return evaluate(run.data, predictors, progress=progress)
    recorder = celleval.Recorder(predictors)
    ev = evaluate(run.data, recorder.predictors, progress=progress)
    extra = celleval.score(run.data, recorder, threads=threads)
    # cell-eval's pearson_delta is ours (the correlation of the mean changes from control):
    # one row per metric, ours, whose model mean is read off `MEAN_CELLS` cells
    extra = extra[~extra["metric"].isin(metrics.METRIC_NAMES)]
    return Evaluation(pd.concat([ev.metrics, extra], ignore_index=True), ev.skipped)


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
