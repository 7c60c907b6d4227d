"""The field's standard metrics: Arc Institute's cell-eval (the Virtual Cell Challenge's
scorer) on the held-out conditions that `evaluate` scores, with the same predicted cells.

cell-eval compares one prediction with the real cells of one context: perturbations and one
control label. Here a context is a cell type: its held-out conditions (one cell-eval
perturbation each, named after the perturbation, ``"DRUG@1"`` when the condition has a dose)
and the control cells of that cell type, the same observed cells in the prediction and in the
real data. Differential expression (pdex: Mann-Whitney U, FDR per perturbation) is computed
by cell-eval on both sides; ``discrimination_score_l1`` ranks a condition's predicted effect
among the real effects of its cell type's held-out perturbations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from .data import Condition, PerturbationData
from .errors import DeparturesError

VERSION = "0.8.2"  # the pin in requirements.txt; the numbers depend on it (and on pdex's DE)
METRICS = ("overlap_at_N", "discrimination_score_l1", "mae", "pearson_delta", "de_direction_match")
VCC_METRICS = ("overlap_at_N", "discrimination_score_l1", "mae")  # cell-eval's "vcc" profile
VCC_SCORE = "vcc_score"
BASELINE = "control"
HIGHER_IS_BETTER = {
    "overlap_at_N": True,
    "discrimination_score_l1": True,
    "mae": False,
    "pearson_delta": True,
    "de_direction_match": True,
    VCC_SCORE: True,
}
PERT_COL = "target"


class CellEvalMissingError(DeparturesError):
    """cell-eval, an optional dependency, is not installed."""


def require():
    """The ``cell_eval`` module (imported here, not at package import: it pulls polars and
    numba kernels the app does not need)."""
    try:
        import cell_eval
    except ImportError as exc:
        raise CellEvalMissingError(
            f"--cell-eval needs Arc Institute's cell-eval: pip install cell-eval=={VERSION}"
        ) from exc
    return cell_eval


def key(cond: Condition) -> tuple[str, str, float]:
    return (cond.perturbation, cond.cell_type, float(cond.dose))


class Recorder:
    """Predictors that keep what they return, so that cell-eval scores the very cells the
    other metrics scored (one sampling, the same seed)."""

    def __init__(self, predictors: dict):
        self.cells: dict[str, dict[tuple, np.ndarray]] = {m: {} for m in predictors}
        self.conditions: dict[tuple, Condition] = {}
        self.predictors = {m: self._keep(m, p) for m, p in predictors.items()}

    def _keep(self, method: str, predict):
        def predict_and_keep(cond: Condition) -> np.ndarray:
            out = predict(cond)
            # a model's `evaluate.Predicted`: its cells one per control cell, the sample the
            # distances score (a DE test's power grows with the cells it is given)
            self.cells[method][key(cond)] = getattr(out, "cells", out)
            self.conditions[key(cond)] = cond
            return out

        return predict_and_keep


def _label(cond: Condition) -> str:
    return f"{cond.perturbation}@{cond.dose:g}" if cond.dose else cond.perturbation


def _anndata(data: PerturbationData, conds: list[Condition], cells: list[np.ndarray]) -> ad.AnnData:
    """The conditions' ``cells`` plus the cell type's control cells, labelled for cell-eval.
    Expression is log1p (cell-eval's expectation); negatives, which a mean shift can give,
    are clipped to 0 (cell-eval rejects them as a wrong scale)."""
    ctrl = data.x[conds[0].control]
    x = np.vstack([ctrl, *cells]).astype(np.float32)
    np.clip(x, 0.0, None, out=x)
    labels = [data.control] * len(ctrl)
    for cond, c in zip(conds, cells, strict=True):
        labels += [_label(cond)] * len(c)
    obs = pd.DataFrame({PERT_COL: labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=data.genes))


@contextlib.contextmanager
def _quiet(verbose: bool):
    """cell-eval's and pdex's logs, warnings and progress bars, unless ``verbose``."""
    import numba

    threads = numba.get_num_threads()  # pdex sets numba's thread pool process-wide
    loggers = [logging.getLogger(n) for n in ("cell_eval", "pdex")]
    levels = [lg.level for lg in loggers]
    try:
        if verbose:
            yield
            return
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        numba.set_num_threads(threads)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _context(
    cell_eval, real: ad.AnnData, pred: ad.AnnData, control: str, threads: int, de_real
) -> tuple[pd.DataFrame, object]:
    """cell-eval on one cell type: per perturbation x `METRICS`, and the real DE to reuse."""
    import numba

    with tempfile.TemporaryDirectory(prefix="cell-eval-") as tmp:
        evaluator = cell_eval.MetricsEvaluator(
            adata_pred=pred,
            adata_real=real,
            de_real=de_real,
            control_pert=control,
            pert_col=PERT_COL,
            num_threads=max(1, min(threads, numba.config.NUMBA_NUM_THREADS)),
            outdir=tmp,
        )
        skip = [m for m in cell_eval.metrics_registry.list_metrics() if m not in METRICS]
        results, _ = evaluator.compute(
            profile="full", skip_metrics=skip, write_csv=False, break_on_error=True
        )
    frame = results.to_pandas().set_index("perturbation")
    return frame.reindex(columns=list(METRICS)), evaluator.de_comparison.real.data


def score(
    data: PerturbationData, recorder: Recorder, *, threads: int = 1, verbose: bool = False
) -> pd.DataFrame:
    """cell-eval's `METRICS` of every recorded condition and method, plus ``vcc_score``
    against ``control``, long (method, perturbation, cell_type, metric, value).

    ``discrimination_score_l1`` is NaN in a cell type with one held-out condition (a rank
    among one is always 1, whatever the prediction)."""
    cell_eval = require()
    by_type: dict[str, list[Condition]] = {}
    for cond in recorder.conditions.values():
        by_type.setdefault(cond.cell_type, []).append(cond)
    records = []
    with _quiet(verbose):
        for conds in by_type.values():
            real = _anndata(data, conds, [data.x[c.perturbed] for c in conds])
            de_real = None  # the real side's DE is the same for every method
            for method, cells in recorder.cells.items():
                pred = _anndata(data, conds, [cells[key(c)] for c in conds])
                frame, de_real = _context(cell_eval, real, pred, data.control, threads, de_real)
                if len(conds) < 2:
                    frame["discrimination_score_l1"] = np.nan
                for cond in conds:
                    records += [
                        (method, cond.perturbation, cond.cell_type, metric, float(value))
                        for metric, value in frame.loc[_label(cond)].items()
                    ]
    frame = pd.DataFrame(
        records, columns=["method", "perturbation", "cell_type", "metric", "value"]
    )
    return pd.concat([frame, _vcc_rows(frame)], ignore_index=True)


def vcc_score(user: dict[str, float], base: dict[str, float]) -> float:
    """cell-eval's `score_agg_metrics` of `VCC_METRICS`: each metric's improvement over the
    baseline, normalised to the room left (``1 - user/base`` for MAE, ``(user - base) /
    (1 - base)`` for the others), clipped at 0, averaged. Metrics that are NaN on either side
    are left out; NaN when none is left."""
    import polars as pl

    cols = [m for m in VCC_METRICS if np.isfinite(user.get(m, np.nan) + base.get(m, np.nan))]
    if not cols:
        return float("nan")

    def agg(values):
        return pl.DataFrame({"statistic": ["mean"], **{m: [float(values[m])] for m in cols}})

    with _quiet(verbose=False):
        out = require().score_agg_metrics(agg(user), agg(base))
    return float(out.filter(pl.col("metric") == "avg_score")["from_baseline"][0])


def _vcc_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """``vcc_score`` of each method on each condition against ``control`` on that condition."""
    means = frame.groupby(["perturbation", "cell_type", "method", "metric"])["value"].mean()
    rows = []
    for (perturbation, cell_type), values in means.groupby(level=[0, 1]):
        values = values.droplevel([0, 1])
        if BASELINE not in values.index.get_level_values("method"):
            continue
        base = values[BASELINE].to_dict()
        for method in values.index.get_level_values("method").unique():
            v = vcc_score(values[method].to_dict(), base)
            rows.append((method, perturbation, cell_type, VCC_SCORE, v))
    return pd.DataFrame(rows, columns=frame.columns)


def vcc_summary(metrics: pd.DataFrame) -> pd.Series:
    """The challenge's way: the VCC score of each method's means over the held-out conditions
    against ``control``'s means (``metrics``: a long frame with cell-eval's rows)."""
    means = (
        metrics[metrics["metric"].isin(VCC_METRICS)]
        .groupby(["method", "metric"])["value"]
        .mean()
        .unstack()
    )
    if BASELINE not in means.index:
        return pd.Series(dtype=float, name=VCC_SCORE)
    base = means.loc[BASELINE].to_dict()
    return pd.Series(
        {m: vcc_score(means.loc[m].to_dict(), base) for m in means.index}, name=VCC_SCORE
    )
