"""The Python API, scanpy style: `fit` an AnnData, `Model.predict` AnnData, `Model.save` and
`load` run folders (the ones ``departures train`` and the app write).

Example
-------
>>> import departures_core as dc
>>> adata = dc.load_demo()
>>> model = dc.fit(adata, perturbation_key="condition", control="control",
...                cell_type_key="cell_type")
>>> pred = model.predict("KLF1", cell_type="k562", n_cells=200)
>>> model.save("runs/demo-api")
>>> model = dc.load("runs/demo-api")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import anndata as ad

from . import io, runs
from .config import RunConfig
from .errors import ConfigError, RunError

# `fit` looks an option up in these sections, in this order (``steps`` and ``batch_size``
# are the training's); ``ot_batch_size`` or ``bridge_steps`` name another section's
SECTIONS = ("data", "train", "bridge", "ot", "model")
_KEYS = ("perturbation_key", "control", "cell_type_key", "dose_key")


class Model:
    """A trained Departures run: predicts perturbed cells as AnnData.

    Made by `fit` or `load`; wraps a `runs.Run` (``model.run``), whose folder ``model.path``
    holds the checkpoint, config and training data.

    Attributes
    ----------
    config : RunConfig
        Everything the run was trained with, the input's obs keys included.
    var_names : list of str
        The model's genes: the columns of every prediction.
    perturbations : list of str
        The perturbations of the training data, held-out ones included.
    held_out : list of str
        The perturbations kept out of training.
    cell_types : list of str
        The cell types (``["all"]`` when the run has no cell type key).
    """

    def __init__(self, run: runs.Run, *, scratch: Path | None = None):
        self.run = run
        # a model fitted without run_dir lives in a temporary folder, removed with it
        self._scratch = weakref.finalize(self, shutil.rmtree, scratch, True) if scratch else None

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def var_names(self) -> list[str]:
        return list(self.run.data.genes)

    @property
    def perturbations(self) -> list[str]:
        split = self.run.model.split
        return sorted({*split.train, *split.holdout})

    @property
    def held_out(self) -> list[str]:
        return list(self.run.model.split.holdout)

    @property
    def cell_types(self) -> list[str]:
        return self.run.data.cell_types

    def __repr__(self) -> str:
        d = self.config.data
        return (
            f"Model of {len(self.perturbations)} perturbations ({len(self.held_out)} held out) "
            f"x {len(self.cell_types)} cell types x {len(self.var_names)} genes; "
            f"perturbation_key={d.perturbation_key!r}, cell_type_key={d.cell_type_key!r}; "
            f"run {str(self.path)!r}"
        )

    def predict(
        self,
        perturbation: str,
        cell_type: str | None = None,
        n_cells: int | None = None,
        seed: int = 0,
        *,
        steps: int | None = None,
        trajectory: bool = False,
        device: str = "auto",
    ) -> ad.AnnData:
        """Predict the cells of ``perturbation`` from control cells.

        Parameters
        ----------
        perturbation
            A label as in the input's perturbation column (``"KLF1"``, ``"KLF1+MAP2K6"``),
            observed, held out, or new when its genes are known to the model.
        cell_type
            Predict in this cell type only. None: every cell type the perturbation was
            observed in (every cell type for a perturbation never observed).
        n_cells
            Control cells drawn per cell type (with replacement when more than there are).
            None: every control cell once.
        seed
            Seeds the draw and the bridges; the same seed gives the same cells.
        steps
            Sampling steps (default: the run's, 50).
        trajectory
            Also keep the path of every cell: ``obsm['X_trajectory']``, shape
            (n_cells, steps + 1, n_genes), ``obsm['D_trajectory']`` and
            ``uns['trajectory_t']``.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        AnnData, shape (n_cells, n_genes)
            ``X`` the predicted log-normalised expression of `var_names`; ``var`` with the
            input's var columns; ``obs`` with the input's own keys (e.g. ``condition``,
            ``cell_type``, the dose key) and values, plus ``perturbation``, ``cell_type``,
            ``dose``, ``control_cell`` (the control cell each started from) and
            ``held_out``; ``layers['x1_hat']`` (the continuous bridge's endpoint) and
            ``layers['activation']`` (the on/off bridge's); ``uns['departures']`` with
            ``run``, ``version``, ``seed``, ``steps`` and ``keys``.

        Raises
        ------
        UnknownPerturbationError
            If no part of ``perturbation`` is known to the model, or ``cell_type`` is not
            one of `cell_types`.
        ConfigError
            If ``n_cells`` or ``steps`` is below 1, or the trajectory would not fit in
            memory.
        """
        return runs.predict(
            self.run,
            perturbation,
            cell_type=cell_type,
            n_cells=n_cells,
            steps=steps,
            seed=seed,
            trajectory=trajectory,
            device=device,
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the run folder to ``path``: it opens with `load`, ``departures predict`` and
        the app (pick it under "Open a run folder", or save it inside the runs folder).

        A model fitted without ``run_dir`` moves to ``path`` (its temporary folder is
        removed), so that its predictions name a folder that lasts.

        Raises
        ------
        RunError
            If ``path`` holds files already and ``overwrite`` is False.
        """
        target = Path(path).expanduser().resolve()
        if target == self.path.resolve():
            return target
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise RunError(
                f"{target} is not empty; choose a new folder or pass overwrite=True to "
                "replace the run files in it."
            )
        target.mkdir(parents=True, exist_ok=True)
        for name in runs.RUN_FILES:
            src, dst = self.path / name, target / name
            if src.is_file():
                tmp = target / f".{name}.partial.tmp"  # never a half-copied file under its name
                shutil.copy2(src, tmp)
                tmp.replace(dst)
            else:  # a file of the run replaced here must not outlive it
                dst.unlink(missing_ok=True)
        if self._scratch is not None:
            self.run = dataclasses.replace(self.run, path=target)
            self._scratch()  # removes the temporary folder
            self._scratch = None
        return target


def fit(
    adata: ad.AnnData,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    cell_type_key: str | None = None,
    dose_key: str | None = None,
    seed: int | None = None,
    run_dir: str | os.PathLike | None = None,
    config: RunConfig | None = None,
    progress_bar: bool = True,
    **options,
) -> Model:
    """Train a Departures model on ``adata``: the model ``departures train`` trains.

    Parameters
    ----------
    adata : AnnData, shape (n_cells, n_genes)
        Raw counts or log-normalised expression in ``X``, a perturbation label per cell in
        ``obs``. Not modified.
    perturbation_key
        obs column with the perturbation labels (combinations joined by ``+``). None:
        detected (``perturbation``, ``condition``, ``gene``, ...).
    control
        The value of that column marking control cells. None: detected (``control``,
        ``ctrl``, ``non-targeting``, ...).
    cell_type_key
        obs column with cell types or lines. None: detected (``cell_type``,
        ``cell_line``, ...), or no cell types.
    dose_key
        obs column with numeric doses (``"1+1"`` for per-part doses of a combination).
        None: no doses.
    seed
        Seeds the hold-out split, the pairing and the training (None: the config's, 0).
    run_dir
        Train into this (new) run folder. None: a temporary folder, kept while the model
        lives or until `Model.save`.
    config
        Start from this configuration (e.g. ``load(path).config``); the arguments above and
        ``options`` replace its settings.
    progress_bar
        Show a progress bar while training.
    **options
        Any setting of `RunConfig`'s sections by name: ``n_genes``, ``holdout`` (list of
        perturbations), ``holdout_fraction`` (default 0.25; 0 trains on every
        perturbation), ``holdout_cell_types``, ``drop_rare``, ``min_cells``, ``epochs``,
        ``steps``, ``batch_size``, ``lr``, ``device``, ``epsilon``, ``pairing``,
        ``discrete``, ``hidden``, ... A name in several sections means the training's
        (``steps``, ``batch_size``); prefix the section for another (``bridge_steps``,
        ``ot_batch_size``).

    Returns
    -------
    Model
        The trained model; ``model.predict(...)`` gives AnnData.

    Raises
    ------
    KeyNotFoundError
        If a given obs key is not a column of ``adata``, or no perturbation column with a
        control value is found.
    DataValidationError
        If ``adata`` cannot be trained on (no control cells, too few cells, bad values...).
    SplitError
        If a held-out perturbation or cell type is not in the data.
    ConfigError
        If an option is unknown or out of range.
    """
    base = config or RunConfig()
    if config is not None:  # the config's keys, unless given
        given = {k: getattr(config.data, k) for k in _KEYS}
        perturbation_key = perturbation_key or given["perturbation_key"]
        control = control or given["control"]
        cell_type_key = cell_type_key or given["cell_type_key"]
        dose_key = dose_key or given["dose_key"]
    found = io.detect_keys(
        adata,
        perturbation_key=perturbation_key,
        control=control,
        cell_type_key=cell_type_key,
        dose_key=dose_key,
    )
    # a dose column is used when named, as on the command line (detection only suggests it)
    keys = {**dataclasses.asdict(found), "dose_key": dose_key}
    base = base if seed is None else base.replace(seed=int(seed))
    cfg = with_options(base, {**options, **keys}).check()
    scratch = Path(tempfile.mkdtemp(prefix="departures-")) if run_dir is None else None
    try:
        run_dir = scratch / "run" if scratch else Path(run_dir)
        runs.train(adata, cfg, run_dir, progress_bar=progress_bar)
        return Model(runs.open_run(run_dir), scratch=scratch)
    except BaseException:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def load(path: str | os.PathLike) -> Model:
    """Open a run folder: one `Model.save`, ``departures train`` or the app wrote.

    Raises
    ------
    RunError
        If ``path`` is not a complete run folder of this version.
    """
    return Model(runs.open_run(Path(path).expanduser()))


def with_options(config: RunConfig, options: dict) -> RunConfig:
    """``config`` with settings given by field name (see `fit`'s ``options``)."""
    fields = {s: {f.name for f in dataclasses.fields(getattr(config, s))} for s in SECTIONS}
    changes: dict[str, dict] = {s: {} for s in SECTIONS}
    for name, value in options.items():
        section, field = _locate(name, fields)
        if isinstance(value, str) and field in ("holdout", "holdout_cell_types"):
            value = (value,)
        elif isinstance(value, list | tuple | set):
            value = tuple(value)
        changes[section][field] = value
    return config.replace(
        **{s: dataclasses.replace(getattr(config, s), **c) for s, c in changes.items() if c}
    )


def _locate(name: str, fields: dict[str, set[str]]) -> tuple[str, str]:
    for section in SECTIONS:
        rest = name.removeprefix(f"{section}_")
        if rest != name and rest in fields[section]:
            return section, rest
    for section in SECTIONS:
        if name in fields[section]:
            return section, name
    known = sorted(set().union(*fields.values()) - set(_KEYS))
    raise ConfigError(f"Unknown option '{name}'. Options: {', '.join(known)}.")
