"""Run folders: train into one, open one, predict from one. The CLI and the app call these."""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from . import distributed, io, keys, pp, responders
from .config import RunConfig
from .data import PerturbationData, Split, populations
from .errors import ConfigError, DeparturesError, RunError, UnknownPerturbationError
from .model import Departures, atomic_write_text, remove_partial_writes
from .predicted import to_anndata  # noqa: F401  (explore imports it from here)
from .responders import draw as draw_non_responders
from .run_files import ProgressFile, check_resumable, sole_writer
from .sample import Simulation, simulate_rows
from .train import fit, load_model, resolve_device, validation_split

# cells x genes x (steps + 1) values a trajectory may hold (float32: ~0.8 GB, plus copies);
# larger requests are refused (`predict`) or get fewer cells with a notice (the app)
MAX_TRAJECTORY_VALUES = 200_000_000
# what a training process writes into its run folder, atomically
RUN_FILES = (
    keys.MODEL_FILE,
    keys.HISTORY_FILE,
    keys.PROGRESS_FILE,
    keys.RESPONDERS_FILE,
    keys.CONFIG_FILE,
    keys.SPLIT_FILE,
    keys.DATA_FILE,
)


def prepare(adata: ad.AnnData, config: RunConfig) -> ad.AnnData:
    """Validate, drop rare perturbations if asked, and preprocess a copy of ``adata``."""
    d = config.data
    obs_keys = io.ObsKeys(d.perturbation_key, d.control, d.cell_type_key, d.dose_key)
    if d.drop_rare:
        io.validate(adata, obs_keys, min_cells=0)
        adata = io.drop_rare(adata, obs_keys, min_cells=d.min_cells)
    io.validate(adata, obs_keys, min_cells=d.min_cells)
    return pp.preprocess(
        adata, perturbation_key=d.perturbation_key, control=d.control, n_genes=d.n_genes, copy=True
    )


def train(
    adata: ad.AnnData,
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    callback=None,
    should_stop=None,
    progress_bar: bool = True,
) -> list[dict]:
    """Train a model on ``adata`` into ``run_dir`` (config, split, data, checkpoint, history).

    With ``resume=True`` training continues from ``run_dir``'s checkpoint, using the run's
    saved data, split and config (``config.train.epochs`` may be raised).

    Under ``torchrun`` every process prepares the data and trains its share of the
    conditions (`train.fit`); only rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    config.check()
    device = resolve_device(config.train.device)
    ctx = distributed.context()
    torch.manual_seed(config.seed)
    if resume and not run_dir.is_dir():
        raise RunError(f"Run folder {run_dir} does not exist; there is nothing to resume.")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with sole_writer(run_dir) if ctx.main else nullcontext():
            return _train_locked(
                adata, config, run_dir, resume, device, ctx, callback, should_stop, progress_bar
            )
    finally:
        distributed.teardown(ctx)


def _train_locked(adata, config, run_dir, resume, device, ctx, callback, should_stop, progress_bar):
    """`train` inside the run folder's lock (rank 0) or beside it (other torchrun ranks)."""
    if ctx.main:
        remove_partial_writes(run_dir, RUN_FILES)  # what a process killed mid-write left
    if resume:
        model, state = load_model(run_dir)
        check_resumable(run_dir, state)
        saved = model.config
        config = saved.replace(train=config.train)
        model.config = config
        data = open_data(run_dir, saved, model.split)
    else:
        if (run_dir / keys.MODEL_FILE).exists():
            raise RunError(
                f"{run_dir} already holds a trained run; resume it (--resume) or "
                "choose another output folder, so that nothing trained is lost."
            )
        prepared = prepare(adata, config)
        data = populations(prepared, config.data, seed=config.seed)
        if ctx.main:
            _write_run_files(run_dir, prepared, config, data.split)
        del prepared  # the data keeps what training needs
        model, state = Departures.build(data, config), None
    if not ctx.main:
        return _fit_rank(model, data, device, state, run_dir)
    atomic_write_text(run_dir / keys.CONFIG_FILE, config.to_json())
    (run_dir / keys.STOP_FILE).unlink(missing_ok=True)
    return _fit_reporting(model, data, run_dir, device, state, callback, should_stop, progress_bar)


def _fit_rank(model, data, device, state, run_dir):
    """A torchrun process other than rank 0: trains its share, writes nothing."""
    fit_data, _ = validation_split(data, model.config.train.validation, model.config.seed)
    return fit(
        model,
        fit_data,
        run_dir=run_dir,
        device=device,
        resume_state=state,
        progress_bar=False,
        should_stop=lambda: False,  # rank 0 decides, `train.fit` shares it
    )


def _fit_reporting(model, data, run_dir, device, state, callback, should_stop, progress_bar):
    """`fit`, reporting to ``progress.json``: steps, then finished, stopped or the failure."""
    reporter = ProgressFile(run_dir / keys.PROGRESS_FILE, device, callback)
    stop = should_stop or (lambda: (run_dir / keys.STOP_FILE).exists())
    config = model.config
    fit_data, validation = validation_split(data, config.train.validation, config.seed)
    (run_dir / keys.RESPONDERS_FILE).unlink(missing_ok=True)  # fitted to the weights it replaces
    try:
        history = fit(
            model,
            fit_data,
            run_dir=run_dir,
            device=device,
            resume_state=state,
            callback=reporter,
            progress_bar=progress_bar,
            should_stop=stop,
        )
        if not stop():  # a stopped run is fitted when it finishes (resume)
            responders.write(model, data, validation, run_dir, device)
    except BaseException as exc:  # the app reads the failure from progress.json
        reporter.fail(exc)
        raise
    reporter.finish(history, stopped=stop())
    return history


def _write_run_files(run_dir: Path, prepared: ad.AnnData, config: RunConfig, split: Split) -> None:
    atomic_write_text(run_dir / keys.SPLIT_FILE, json.dumps(split.to_dict(), indent=2))
    keep = [config.data.perturbation_key, config.data.cell_type_key, config.data.dose_key]
    # the input's obs keys and var columns, as the input typed them: predictions are written
    # in the same conventions (`predicted.to_anndata`)
    slim = ad.AnnData(
        X=prepared.X,
        obs=prepared.obs[list(dict.fromkeys(k for k in keep if k))].apply(_storable),
        var=prepared.var.apply(_storable) if prepared.var.shape[1] else prepared.var.copy(),
        uns={"departures_pp": prepared.uns.get("departures_pp", {})},
    )
    tmp = run_dir / f".{keys.DATA_FILE}.partial.tmp"  # removed by `remove_partial_writes`
    slim.write_h5ad(tmp, compression="gzip")
    tmp.replace(run_dir / keys.DATA_FILE)


def _storable(col: pd.Series) -> pd.Series:
    """``col`` as h5ad stores it: categories, numbers and booleans kept, anything else text."""
    kept = isinstance(col.dtype, pd.CategoricalDtype) or is_numeric_dtype(col.dtype)
    return col if kept or is_bool_dtype(col.dtype) else col.astype(str)


def open_data(run_dir: str | Path, config: RunConfig, split: Split) -> PerturbationData:
    """The preprocessed data a run was trained on (saved in the run folder)."""
    return _open_saved(run_dir, config, split)[0]


def _open_saved(run_dir, config: RunConfig, split: Split) -> tuple[PerturbationData, ad.AnnData]:
    """`open_data`, and the saved AnnData without its matrix (obs keys, var columns)."""
    path = Path(run_dir) / keys.DATA_FILE
    if not path.exists():
        raise RunError(
            f"{run_dir} has no {keys.DATA_FILE}; the run folder is incomplete. Copy the whole "
            "folder a training run wrote (the model needs the data it was trained on), or "
            "train again."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = io.read(path)
            data = populations(adata, config.data, seed=config.seed, split=split)
            return data, ad.AnnData(obs=adata.obs, var=adata.var)
    except (DeparturesError, OSError, KeyError, ValueError) as exc:
        raise RunError(
            f"{path} cannot be used ({exc}). Copy the run folder again from an intact "
            "copy, or train again."
        ) from exc


@dataclass
class Run:
    """A trained run: its model and the data it was trained on."""

    path: Path
    model: Departures
    data: PerturbationData
    epoch: int
    unaffected: dict | None = None  # `calibration.fit_unaffected`; None: all cells respond
    # the saved data's obs keys and var columns, as the input had them (`predicted`)
    obs: pd.DataFrame | None = None
    var: pd.DataFrame | None = None

    @property
    def config(self) -> RunConfig:
        return self.model.config


def open_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(
            f"Run folder {run_dir} does not exist. Train one with "
            "`python -m departures_core train ... --out RUN_DIR`."
        )
    model, state = load_model(run_dir)
    data, saved = _open_saved(run_dir, model.config, model.split)
    if list(data.genes) != list(model.vocab.genes):
        raise RunError(f"{run_dir}: the saved data's genes differ from the model's genes.")
    epoch, unaffected = int(state["epoch"]), responders.read(run_dir)
    return Run(run_dir, model, data, epoch, unaffected, obs=saved.obs, var=saved.var)


def predict(
    run: Run,
    perturbation: str,
    *,
    cell_type: str | None = None,
    n_cells: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    trajectory: bool = False,
    device: str = "cpu",
) -> ad.AnnData:
    """Predicted cells of ``perturbation`` from the control cells of each cell type.

    ``cell_type`` None predicts in every cell type where the perturbation was observed
    (all cell types for a perturbation never observed). ``n_cells`` control cells are
    drawn per cell type (all of them when None; when more are asked, each control cell as
    often as the others, give or take one, and repeated non-responders are fresh draws).
    The AnnData keeps the input's obs keys and var columns (`predicted`).
    """
    data, model = run.data, run.model
    if n_cells is not None and n_cells < 1:
        raise ConfigError(f"--n-cells must be >= 1, got {n_cells}.")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}.")
    unknown = model.check_perturbation(perturbation)
    cell_types = _cell_types_for(data, perturbation, cell_type)
    n_steps = model.config.bridge.steps if steps is None else steps
    if trajectory:  # refused before anything is drawn or simulated
        sizes = [len(data.control_indices(ct)) if n_cells is None else n_cells for ct in cell_types]
        check_trajectory_size(sum(sizes), len(data.genes), n_steps)
    rng = np.random.default_rng(seed)
    starts, rows, obs = [], [], []
    for ct in cell_types:
        ctrl = data.control_indices(ct)
        if len(ctrl) == 0:
            raise UnknownPerturbationError(f"Cell type '{ct}' has no control cells to start from.")
        n = len(ctrl) if n_cells is None else int(n_cells)
        # each control cell as often as the others, give or take one: drawn with replacement,
        # some would start many cells and others none, and only a control cell's first use
        # is a non-responder that stays it exactly (`sample.fresh_unchanged`)
        whole, rest = divmod(n, len(ctrl))
        pick = np.concatenate([np.tile(ctrl, whole), rng.choice(ctrl, rest, replace=False)])
        cond = data.find(perturbation, ct)
        dose = cond.dose if cond is not None else 0.0
        starts.append(pick)
        rows += [(perturbation, ct, dose)] * len(pick)
        held = cond.held_out if cond is not None else True
        obs.append(
            pd.DataFrame(
                {
                    keys.PERTURBATION: perturbation,
                    keys.CELL_TYPE: ct,
                    keys.DOSE: dose,
                    keys.CONTROL_CELL: data.cell_names[pick],
                    keys.HELD_OUT: held,
                }
            )
        )
    start = np.concatenate(starts)
    sim = simulate_from(
        run, start, rows, steps=n_steps, seed=seed, trajectory=trajectory, device=device
    )
    return to_anndata(
        sim,
        pd.concat(obs, ignore_index=True),
        data.genes,
        {"seed": seed, "steps": len(sim.t) - 1, "unknown_parts": unknown},
        run=run,
    )


def simulate_from(
    run: Run,
    start: np.ndarray,
    rows: list[tuple[str, str, float]],
    *,
    steps: int,
    seed: int = 0,
    trajectory: bool = False,
    device: str = "cpu",
    responders: bool = True,
) -> Simulation:
    """Simulate the run's bridges from data rows ``start`` (control cells), one condition
    ``(perturbation, cell_type, dose)`` per row. Cells drawn as non-responders (the run's
    unaffected fraction of the condition, `calibration.unaffected_for`; for a condition
    without its own, read off the bridges' predicted effect) stay their control cell, or,
    where ``start`` repeats a control cell, a fresh draw near it (`responders.draw`);
    ``responders=False`` simulates every cell with the bridges."""
    x0 = run.data.x[start]
    sim = simulate_rows(
        run.model,
        x0,
        rows,
        steps=steps,
        seed=seed,
        trajectory=trajectory,
        device=resolve_device(device),
    )
    if responders and run.unaffected:
        transfer = run.model.config.bridge.transfer
        draw_non_responders(
            sim,
            run.unaffected,
            rows,
            x0,
            seed,
            transfer=transfer,
            sources=np.asarray(start),
            vocab=run.model.vocab,
        )
    return sim


def check_trajectory_size(n_cells: int, n_genes: int, steps: int) -> None:
    """Raise `ConfigError` before simulating a trajectory too large to keep in memory."""
    values = n_cells * n_genes * (steps + 1)
    if values <= MAX_TRAJECTORY_VALUES:
        return
    fit_cells = MAX_TRAJECTORY_VALUES // (n_genes * (steps + 1))
    fewer = (
        f"fewer cells (--n-cells {fit_cells:,} or less at {steps} steps) or fewer steps (--steps)"
        if fit_cells
        else f"fewer steps (--steps {max(1, MAX_TRAJECTORY_VALUES // n_genes - 1):,} or less)"
    )
    raise ConfigError(
        f"A trajectory of {n_cells:,} cells × {n_genes:,} genes × {steps + 1} time points is "
        f"{values:,} values (~{values * 4 / 1e9:.1f} GB), more than the "
        f"{MAX_TRAJECTORY_VALUES:,} that fit in memory. Ask for {fewer}, or leave out "
        "--trajectory to keep only the endpoints."
    )


def _cell_types_for(data: PerturbationData, perturbation: str, cell_type: str | None) -> list[str]:
    if cell_type is not None:
        if cell_type not in data.cell_types:
            raise UnknownPerturbationError(
                f"Unknown cell type '{cell_type}'. Known: {', '.join(data.cell_types)}."
            )
        return [cell_type]
    seen = sorted({c.cell_type for c in data.conditions if c.perturbation == perturbation})
    return seen or data.cell_types
