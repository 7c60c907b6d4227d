"""Predicted cells as AnnData, in the conventions of the data the run was trained on.

Layout (`to_anndata` with a run; ``predict``, the app's downloads and the Python API):

* ``obs``: the input's own keys (the run's ``perturbation_key``, ``cell_type_key`` and
  ``dose_key``, e.g. ``condition``) with the input's values and dtypes, then the canonical
  ``perturbation``, ``cell_type``, ``dose``, ``control_cell`` (the control cell each
  prediction started from) and ``held_out``; an input key that is itself a canonical name
  holds the input's values.
* ``var``: the model's genes, with the input's var columns.
* ``uns['departures']``: ``run``, ``version``, ``seed``, ``steps``, ``keys`` (the obs keys
  above), ``unknown_parts``.

So ``anndata.concat([observed[:, pred.var_names], pred])`` lines the observed and predicted
cells up under the input's keys.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from . import keys
from .config import DataConfig
from .data import parse_dose
from .sample import Simulation


def to_anndata(
    sim: Simulation, obs: pd.DataFrame, genes: list[str], info: dict, *, run=None
) -> ad.AnnData:
    """A `Simulation` as AnnData: X the prediction, layers with both bridges' endpoints.

    Parameters
    ----------
    sim
        The simulated cells, shape (n_cells, n_genes).
    obs : DataFrame, shape (n_cells, ...)
        The canonical columns ``perturbation``, ``cell_type``, ``dose``, ``control_cell``
        and ``held_out``, one row per simulated cell.
    genes
        The model's genes, in the columns' order.
    info
        Written to ``uns['departures']`` (``seed``, ``steps``, ...).
    run : runs.Run, optional
        The run that predicted: adds its input's obs keys, var columns and the ``run``,
        ``version`` and ``keys`` entries of ``uns['departures']``.
    """
    obs = obs.reset_index(drop=True)
    var = pd.DataFrame(index=pd.Index(list(genes), dtype=object))
    if run is not None:
        obs = input_obs(obs, run.config.data, run.obs)
        var = input_var(run.var, genes)
        info = {**run_info(run), **info}
    obs.index = [f"pred_{i}" for i in range(len(obs))]
    out = ad.AnnData(X=sim.prediction, obs=obs, var=var)
    out.layers["x1_hat"] = sim.x1_hat.astype(np.float32)
    if sim.d1_hat is not None:
        out.layers["activation"] = sim.d1_hat.astype(np.uint8)
    if sim.x_path is not None:
        out.obsm[keys.TRAJECTORY_X] = np.ascontiguousarray(
            sim.x_path.transpose(1, 0, 2), dtype=np.float32
        )
        out.obsm[keys.TRAJECTORY_D] = np.ascontiguousarray(sim.d_path.transpose(1, 0, 2))
        out.uns[keys.TRAJECTORY_T] = sim.t
    out.uns[keys.PREDICTION_UNS] = info
    return out


def run_info(run) -> dict:
    """``uns['departures']`` entries naming the run: path, library version, obs keys."""
    from . import __version__

    d = run.config.data
    obs_keys = {
        "perturbation_key": d.perturbation_key,
        "control": d.control,
        "cell_type_key": d.cell_type_key,
        "dose_key": d.dose_key,
    }
    # h5ad cannot store None: a key the run does not use is left out
    return {
        "run": str(run.path),
        "version": __version__,
        "keys": {k: v for k, v in obs_keys.items() if v is not None},
    }


def input_obs(obs: pd.DataFrame, cfg: DataConfig, saved: pd.DataFrame | None) -> pd.DataFrame:
    """``obs`` (canonical columns) with the input's own keys in front, holding the input's
    values: the label, cell type and dose as the run's ``data.h5ad`` stored them."""
    saved = saved if saved is not None else pd.DataFrame()
    own = {}
    for key, canonical in (
        (cfg.perturbation_key, keys.PERTURBATION),
        (cfg.cell_type_key, keys.CELL_TYPE),
    ):
        if key:
            own[key] = _as_input(obs[canonical].astype(str), saved.get(key))
    if cfg.dose_key:
        labels = saved.get(cfg.perturbation_key)
        own[cfg.dose_key] = _input_doses(obs, saved.get(cfg.dose_key), labels)
    rest = obs.drop(columns=[k for k in own if k in obs.columns])
    return pd.concat([pd.DataFrame(own, index=obs.index), rest], axis=1)


def _as_input(values: pd.Series, saved: pd.Series | None) -> pd.Series:
    """String labels as the input held them: its categories (new labels appended), or its
    values when it stored numbers."""
    if saved is None:
        return values
    if isinstance(saved.dtype, pd.CategoricalDtype):
        cats = list(saved.cat.categories)
        by_text = {str(c): c for c in cats}
        new = [v for v in pd.unique(values) if v not in by_text]
        return pd.Series(
            pd.Categorical([by_text.get(v, v) for v in values], categories=cats + new),
            index=values.index,
        )
    by_text = dict(zip(saved.astype(str), saved, strict=True))
    return values.map(lambda v: by_text.get(v, v))


def _input_doses(obs: pd.DataFrame, saved: pd.Series | None, labels: pd.Series | None):
    """Each predicted cell's dose as the input wrote it: a number in a numeric column, else
    the input's text of that perturbation and dose (e.g. ``"1+1"`` for a combination)."""
    dose = obs[keys.DOSE].astype(float)
    if saved is None or is_bool_dtype(saved.dtype):
        return dose
    if is_numeric_dtype(saved.dtype):
        return dose.astype(saved.dtype) if (dose % 1 == 0).all() else dose
    pairs = pd.DataFrame(
        {"p": labels.astype(str) if labels is not None else "", "v": saved.astype(str)}
    ).drop_duplicates()
    text = {(p, parse_dose(v)): v for p, v in zip(pairs["p"], pairs["v"], strict=True)}
    perts = obs[keys.PERTURBATION].astype(str)
    values = [text.get((p, d), f"{d:g}") for p, d in zip(perts, dose, strict=True)]
    return _as_input(pd.Series(values, index=obs.index), saved)


def input_var(saved: pd.DataFrame | None, genes: list[str]) -> pd.DataFrame:
    """The input's var columns for the model's ``genes`` (none for a run saved without)."""
    index = pd.Index(list(genes), dtype=object)
    if saved is None or saved.shape[1] == 0:
        return pd.DataFrame(index=index)
    return saved.reindex(index).copy()
