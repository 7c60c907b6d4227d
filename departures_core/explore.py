"""What the exploration views share: a run's conditions, the cells of one condition (control,
observed, predicted), a 2-D reducer fitted on control + observed cells, and the scores of one
condition against the baselines. Everything here works without Streamlit.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import cache, keys, metrics
from .data import Condition
from .errors import ConfigError, UnknownPerturbationError
from .evaluate import METHODS, NOISE_FLOOR, PER_CONTROL, de_genes, mean_shift_predictor
from .model import condition_rows
from .runs import MAX_TRAJECTORY_VALUES, simulate_from  # one memory cap, one sampler entry
from .sample import Simulation


def conditions_table(run) -> pd.DataFrame:
    """One row per observed condition: perturbation, cell_type, dose, n_perturbed, n_control,
    held_out, validation (left out of training to fit what unseen ones are predicted with) —
    held-out rows first, then by perturbation."""
    rows = [
        {
            "perturbation": c.perturbation,
            "cell_type": c.cell_type,
            "dose": c.dose,
            "n_perturbed": int(len(c.perturbed)),
            "n_control": int(len(c.control)),
            "held_out": bool(c.held_out),
            "validation": bool(c.validation),
        }
        for c in run.data.conditions
    ]
    columns = ["perturbation", "cell_type", "dose", "n_perturbed", "n_control", "held_out"]
    table = pd.DataFrame(rows, columns=[*columns, "validation"])
    return table.sort_values(
        ["held_out", "perturbation", "cell_type"], ascending=[False, True, True]
    ).reset_index(drop=True)


def find_condition(run, perturbation: str, cell_type: str) -> Condition:
    """The observed condition; `UnknownPerturbationError` naming the options when absent."""
    cond = run.data.find(perturbation, cell_type)
    if cond is None:
        known = sorted({c.perturbation for c in run.data.conditions if c.cell_type == cell_type})
        raise UnknownPerturbationError(
            f"'{perturbation}' was not observed in cell type '{cell_type}'. Observed there: "
            f"{', '.join(known[:20]) or 'none'}{' …' if len(known) > 20 else ''}."
        )
    return cond


@dataclass(frozen=True)
class ConditionCells:
    """Control, observed and predicted cells of one condition (rows: cells, columns: genes).

    ``predicted`` has one cell per row of ``control_rows`` (control cells the bridge started
    from); ``simulation`` holds the bridge endpoints and, when asked for, the whole paths.
    """

    perturbation: str
    cell_type: str
    dose: float
    held_out: bool
    genes: list[str]
    control: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    control_rows: np.ndarray
    simulation: Simulation
    seed: int
    notice: str | None = None  # e.g. "showing N cells" when a trajectory was capped
    validation: bool = False  # a training perturbation left out of the network's training
    request: tuple = ()  # the arguments that made it: (perturbation, cell_type, n_cells, seed,
    # steps, trajectory) as given to `condition_cells`; a cache key

    @property
    def label(self) -> str:
        held = " (held out)" if self.held_out else " (validation)" if self.validation else ""
        return f"{self.perturbation} · {self.cell_type}{held}"

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise UnknownPerturbationError(
                f"Gene '{gene}' is not among the run's {len(self.genes)} genes."
            ) from None


def trajectory_cells(n_cells: int, n_genes: int, steps: int) -> int:
    """How many cells a trajectory of ``steps`` may have to stay under the memory cap."""
    return max(1, MAX_TRAJECTORY_VALUES // max(1, n_genes * (steps + 1)))


def condition_cells(
    run,
    perturbation: str,
    cell_type: str,
    *,
    n_cells: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    trajectory: bool = False,
    device: str = "cpu",
) -> ConditionCells:
    """Simulate ``perturbation`` in ``cell_type`` from (a seeded sample of) its control cells.

    ``n_cells`` None starts from every control cell. Trajectories larger than the memory cap
    are refused before they are simulated: fewer cells are used and ``notice`` says so.
    """
    if n_cells is not None and n_cells < 1:
        raise ConfigError(f"n_cells must be >= 1, got {n_cells}.")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}.")
    request = (perturbation, cell_type, n_cells, seed, steps, trajectory)
    cond = find_condition(run, perturbation, cell_type)
    data, model = run.data, run.model
    steps = model.config.bridge.steps if steps is None else int(steps)
    rng = np.random.default_rng(seed)
    ctrl = cond.control
    n = len(ctrl) if n_cells is None else int(n_cells)
    notice = None
    if trajectory:
        cap = trajectory_cells(n, len(data.genes), steps)
        if n > cap:
            notice = (
                f"{n:,} cells × {len(data.genes):,} genes × {steps + 1} time points is too "
                f"much to keep in memory; showing {cap:,} cells."
            )
            n = cap
    start = ctrl if n == len(ctrl) else rng.choice(ctrl, n, replace=n > len(ctrl))
    sim = simulate_from(
        run,
        start,
        condition_rows([cond]) * len(start),
        steps=steps,
        seed=seed,
        trajectory=trajectory,
        device=device,
    )
    return _assemble(run, cond, np.asarray(start), sim, seed, notice, request)


def _assemble(run, cond, start, sim, seed, notice, request) -> ConditionCells:
    data = run.data
    return ConditionCells(
        perturbation=cond.perturbation,
        cell_type=cond.cell_type,
        dose=cond.dose,
        held_out=cond.held_out,
        validation=cond.validation,
        genes=list(data.genes),
        control=data.x[cond.control],
        observed=data.x[cond.perturbed],
        predicted=sim.prediction,
        control_rows=start,
        simulation=sim,
        seed=seed,
        notice=notice,
        request=request,
    )


def cells_codec(run) -> cache.Codec:
    """How `ConditionCells` of ``run`` are kept on disk (`cache.RunCache`): the simulation and
    the start rows; control and observed cells are the run's own, taken from it again."""

    def encode(cells: ConditionCells):
        arrays, sim = cache.dataclass_entry(cells.simulation, prefix="sim.")
        arrays["control_rows"] = cells.control_rows
        head = [cells.perturbation, cells.cell_type, cells.seed, cells.notice]
        return arrays, {"cells": cache.to_tagged([*head, cells.request]), "sim": sim}

    def decode(arrays, meta) -> ConditionCells:
        perturbation, cell_type, seed, notice, request = cache.from_tagged(meta["cells"])
        sim = cache.dataclass_from_entry(Simulation, arrays, meta["sim"], prefix="sim.")
        cond = find_condition(run, perturbation, cell_type)
        return _assemble(run, cond, arrays["control_rows"], sim, seed, notice, tuple(request))

    return cache.Codec(encode, decode)


# ------------------------------------------------------------------ 2-D reducer
_FIT_LOCK = threading.Lock()  # numba compiles umap-learn's kernels once; not thread-safe


@dataclass
class Reducer:
    """PCA then UMAP, fitted on reference cells; places new cells with ``transform``."""

    n_pcs: int = 30
    seed: int = 0
    _pca: object = field(default=None, repr=False)
    _umap: object = field(default=None, repr=False)
    reference: np.ndarray | None = field(default=None, repr=False)  # coords of the fit cells

    def fit(self, x: np.ndarray) -> Reducer:
        import umap
        from sklearn.decomposition import PCA

        x = np.asarray(x, np.float32)
        if len(x) < 5:
            raise ConfigError(f"Need at least 5 cells to fit a UMAP, got {len(x)}.")
        n_comp = max(2, min(self.n_pcs, x.shape[1] - 1, x.shape[0] - 1))
        self._pca = PCA(n_comp, random_state=self.seed).fit(x)
        with _FIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._umap = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=self.seed).fit(
                self._pca.transform(x)
            )
        self.reference = np.asarray(self._umap.embedding_, np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """2-D coordinates of ``x`` (rows: cells) in the fitted map."""
        if self._umap is None:
            raise RuntimeError("Reducer.transform called before fit.")
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            return np.zeros((0, 2), np.float32)
        with _FIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self._umap.transform(self._pca.transform(x)), np.float32)


@dataclass
class CellMap:
    """A 2-D map fitted on the control + observed cells of some conditions of one cell type.

    ``rows`` are the fit cells' rows in ``run.data.x`` and ``coords`` their positions; other
    cells (predictions, trajectories) are placed with the reducer's ``transform``. A map read
    back from the disk cache has no reducer until one is needed (`fitted`): most views only
    need positions that were cached too, and a new process then never imports umap.
    """

    cell_type: str
    perturbations: tuple[str, ...]
    rows: np.ndarray
    coords: np.ndarray
    reducer: Reducer | None = None
    seed: int = 0
    fit_cells: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fitted(self) -> Reducer:
        """The reducer, fitted again on the ``fit_cells`` when the map came from disk. UMAP with
        a seed is deterministic, so it lands on ``coords``; a warning says when it did not."""
        with self._lock:  # one fit, however many sessions ask at once
            if self.reducer is None:
                reducer = Reducer(seed=self.seed).fit(self.fit_cells())
                span = float(np.ptp(self.coords)) if len(self.coords) else 1.0
                if not np.allclose(reducer.reference, self.coords, atol=1e-3 * span):
                    warnings.warn(
                        f"The UMAP of {self.cell_type} fitted again differs from the cached one "
                        "(another machine or library version?); cells placed now may sit off "
                        "the cached positions.",
                        stacklevel=2,
                    )
                self.reducer = reducer
        return self.reducer

    def coords_of(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Positions of data rows ``rows`` (their expression ``x``): fitted where the row was a
        fit cell, placed with ``transform`` otherwise."""
        rows = np.asarray(rows)
        lookup = dict(zip(self.rows.tolist(), range(len(self.rows)), strict=True))
        where = np.array([lookup.get(r, -1) for r in rows.tolist()], dtype=int)
        out = np.empty((len(rows), 2), np.float32)
        hit = where >= 0
        out[hit] = self.coords[where[hit]]
        if (~hit).any():
            out[~hit] = self.fitted().transform(np.asarray(x)[~hit])
        return out

    def place(self, x: np.ndarray) -> np.ndarray:
        """Positions of new cells (rows of ``x``)."""
        return self.fitted().transform(x)


def cell_map(
    run, perturbations: list[str], cell_type: str, *, seed: int = 0, max_cells: int = 5000
) -> CellMap:
    """Fit PCA + UMAP on the control cells of ``cell_type`` and the observed cells of
    ``perturbations`` there (a seeded subsample of at most ``max_cells``)."""
    conds = [find_condition(run, p, cell_type) for p in perturbations]
    rows = np.unique(
        np.concatenate([run.data.control_indices(cell_type)] + [c.perturbed for c in conds])
    )
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    reducer = Reducer(seed=seed).fit(run.data.x[rows])
    return CellMap(cell_type, tuple(perturbations), rows, reducer.reference, reducer, seed)


def map_codec(run) -> cache.Codec:
    """How a `CellMap` of ``run`` is kept on disk: its rows and positions (no reducer)."""

    def encode(cmap: CellMap):
        meta = {"map": cache.to_tagged([cmap.cell_type, cmap.perturbations, cmap.seed])}
        return {"rows": cmap.rows, "coords": cmap.coords}, meta

    def decode(arrays, meta) -> CellMap:
        cell_type, perturbations, seed = cache.from_tagged(meta["map"])
        rows = arrays["rows"]
        return CellMap(
            cell_type, perturbations, rows, arrays["coords"], None, seed, lambda: run.data.x[rows]
        )

    return cache.Codec(encode, decode)


# ------------------------------------------------------------------ scores
def condition_scores(run, cells: ConditionCells, saved: pd.DataFrame | None = None) -> pd.DataFrame:
    """Metrics of this condition for Departures (these samples), control and mean_shift, plus
    any other method in ``saved`` (a long metrics.csv of the run's evaluation).

    Returns a wide frame: one row per method, one column per metric.
    """
    cond = find_condition(run, cells.perturbation, cells.cell_type)
    top = de_genes(run.data, cond)
    ctrl, obs = cells.control, cells.observed
    predicted = {
        "departures": cells.predicted,
        "control": ctrl,
        "mean_shift": mean_shift_predictor(run.data)(cond),
    }
    rows = {
        name: metrics.condition_metrics(pred, obs, ctrl, genes=cells.genes, de_genes=top)
        for name, pred in predicted.items()
    }
    wide = pd.DataFrame.from_dict(rows, orient="index")
    if saved is not None and len(saved):
        # the baselines' rows (the model's 200-cell rows and the noise floor are not methods)
        per_control = saved["cells"].astype(str) == PER_CONTROL if "cells" in saved else True
        mine = saved[
            (saved["perturbation"] == cells.perturbation)
            & (saved["cell_type"] == cells.cell_type)
            & ~saved["method"].isin([*rows, NOISE_FLOOR])
            & saved["metric"].isin(metrics.METRIC_NAMES)
            & per_control
        ]
        if len(mine):
            extra = mine.pivot_table(index="method", columns="metric", values="value")
            wide = pd.concat([wide, extra])
    wide.index.name = "method"
    return wide


def saved_cell_eval(saved: pd.DataFrame | None, perturbation: str, cell_type: str):
    """cell-eval's metrics and VCC score of one condition from the run's saved evaluation
    (``evaluate --cell-eval``; a long metrics.csv), wide: one row per method; None when the
    evaluation has none for this condition."""
    from .celleval import METRICS, VCC_SCORE

    if saved is None or not len(saved):
        return None
    names = [*METRICS, VCC_SCORE]
    mine = saved[
        (saved["perturbation"] == perturbation)
        & (saved["cell_type"] == cell_type)
        & saved["metric"].isin(names)
    ]
    if not len(mine):
        return None
    wide = mine.pivot_table(index="method", columns="metric", values="value", dropna=False)
    order = [m for m in (*METHODS, *sorted(wide.index)) if m in wide.index]
    return wide.loc[list(dict.fromkeys(order)), [n for n in names if n in wide.columns]]


def top_changes(cells: ConditionCells, n: int = 20) -> pd.DataFrame:
    """The ``n`` genes whose observed mean changes most against control, with the predicted
    change: columns gene, observed_change, predicted_change, sorted by |observed_change|."""
    base = cells.control.mean(0)
    obs = cells.observed.mean(0) - base
    pred = cells.predicted.mean(0) - base
    order = np.argsort(-np.abs(obs))[:n]
    return pd.DataFrame(
        {
            "gene": [cells.genes[i] for i in order],
            "observed_change": obs[order],
            "predicted_change": pred[order],
        }
    )


# ------------------------------------------------------------------ downloads
def predicted_anndata(run, cells_list: list[ConditionCells]) -> ad.AnnData:
    """The predicted cells of one or more conditions as one AnnData (as ``predict`` writes
    it: X the prediction, obs perturbation / cell type / dose / start control cell)."""
    from .runs import to_anndata

    parts = []
    for c in cells_list:
        obs = pd.DataFrame(
            {
                keys.PERTURBATION: c.perturbation,
                keys.CELL_TYPE: c.cell_type,
                keys.DOSE: c.dose,
                keys.CONTROL_CELL: run.data.cell_names[c.control_rows],
                keys.HELD_OUT: c.held_out,
            }
        )
        info = {"seed": c.seed, "steps": len(c.simulation.t) - 1}
        parts.append(to_anndata(c.simulation, obs, c.genes, info, run=run))
    out = (
        ad.concat(parts, merge="same", uns_merge="first", index_unique="-")
        if len(parts) > 1
        else parts[0]
    )
    out.obs_names = [f"pred_{i}" for i in range(out.n_obs)]
    return out


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    """``adata`` written as an .h5ad file, in memory (for a download button)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def warm_up() -> None:
    """Fit and apply a tiny `Reducer`, so that numba compiles umap-learn's kernels (about
    20-60 s, once per process) before a user asks for a map. Run it in a background thread."""
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    Reducer().fit(x).transform(x[:4])
