"""Joint training of both bridges: OT pairs per condition each epoch, AdamW, atomic checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import keys, ot
from .bridges import ctmc, sde
from .config import RunConfig, resolved_epochs
from .data import PerturbationData
from .errors import ConfigError, RunError
from .model import (
    Departures,
    condition_rows,
    encode,
    first_line,
    load_checkpoint,
    save_checkpoint,
)

HISTORY_COLUMNS = ("step", "epoch", "loss_cont", "loss_disc", "loss", "seconds")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` takes CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    from .errors import DeparturesError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeparturesError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto."
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise DeparturesError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


def validation_split(
    data: PerturbationData, fraction: float, seed: int, min_cells: int = 10
) -> tuple[PerturbationData, dict[tuple[str, str, float], np.ndarray]]:
    """Keep ``fraction`` of the perturbed cells of each training condition out of training.

    Returns the data to train on (the same object when nothing is kept out) and the kept-out
    rows per ``(perturbation, cell_type, dose)``. Conditions with fewer than
    ``2 * min_cells`` perturbed cells keep all their cells for training. Seeded: a resume
    trains on the same cells.
    """
    if fraction <= 0:
        return data, {}
    rng = np.random.default_rng([seed, 7])
    conditions, held = [], {}
    for cond in data.conditions:
        n_val = int(round(fraction * len(cond.perturbed)))
        if cond.held_out or len(cond.perturbed) < 2 * min_cells or n_val < min_cells // 2:
            conditions.append(cond)
            continue
        val = np.zeros(len(cond.perturbed), dtype=bool)
        val[rng.choice(len(cond.perturbed), n_val, replace=False)] = True
        held[(cond.perturbation, cond.cell_type, cond.dose)] = cond.perturbed[val]
        conditions.append(dataclasses.replace(cond, perturbed=cond.perturbed[~val]))
    return dataclasses.replace(data, conditions=conditions), held


def ot_space(data: PerturbationData, config: RunConfig) -> np.ndarray:
    """The coordinates of every cell that the OT cost is measured in (genes or PCs)."""
    if config.ot.space == "pca" and config.ot.pairing == "ot":
        return ot.pca_features(data.x, config.ot.n_pcs, seed=config.seed)
    return data.x


def epoch_pairs(
    data: PerturbationData,
    config: RunConfig,
    rng: np.random.Generator,
    features: np.ndarray | None = None,
):
    """OT (or random) pairs of every training condition: control rows, perturbed rows, condition.

    ``features`` are the cells' coordinates for the cost (`ot_space`; the genes when None)."""
    c = config.ot
    z = data.x if features is None else features
    i0, i1, cond = [], [], []
    for k, condition in enumerate(data.train_conditions()):
        a, b = ot.pair_condition(
            z[condition.control],
            z[condition.perturbed],
            rng,
            pairing=c.pairing,
            batch_size=c.batch_size,
            epsilon=c.epsilon,
            cost=c.cost,
            scale=c.scale,
            log_domain=c.scale == "mean",
            max_iter=c.max_iter,
            stop_thr=c.stop_thr,
        )
        i0.append(condition.control[a])
        i1.append(condition.perturbed[b])
        cond.append(np.full(len(a), k))
    return np.concatenate(i0), np.concatenate(i1), np.concatenate(cond)


def losses(model: Departures, x0: torch.Tensor, x1: torch.Tensor, cond, config: RunConfig):
    """``(L_cont, L_disc)`` for one batch of pairs; ``L_disc`` is 0 without the discrete bridge."""
    b = config.bridge
    net = model.net
    t = torch.empty(len(x0), 1, device=x0.device).uniform_(b.t_min, 1.0 - b.t_min)
    x_t = sde.sample_xt(x0, x1, t, b.sigma)
    d0, d1 = (x0 > 0).float(), (x1 > 0).float()
    emb = net.embed(net.encoder(cond), t)
    if net.disc is None:  # without the on/off bridge nothing else zeroes inactive genes
        loss_cont = ((net.endpoint(x_t, x0, t, emb) - x1) ** 2).mean()
        return loss_cont, torch.zeros((), device=x0.device)
    loss_cont = sde.masked_mse(net.endpoint(x_t, x0, t, emb, d1), x1, d1).mean()
    d_t, switched = ctmc.sample_switched(d0, d1, t)
    logits = net.activation_logits(d_t, switched, x0, emb)
    # only genes still to switch carry information (the others are d1 already)
    pending = (~switched).to(x0.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, d1, reduction="none")
    loss_disc = (bce * pending).sum() / pending.sum().clamp(min=1.0)
    return loss_cont, loss_disc


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss_cont: float
    loss_disc: float


def fit(
    model: Departures,
    data: PerturbationData,
    *,
    run_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    resume_state: dict | None = None,
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_bar: bool = True,
) -> list[dict]:
    """Train ``model`` on ``data``'s training conditions; checkpoint each epoch into ``run_dir``.

    Returns the history rows (one per step). ``resume_state`` (a loaded checkpoint)
    continues from its last finished epoch; ``should_stop`` ends training after the
    current step and saves a checkpoint.
    """
    from tqdm.auto import tqdm

    config, device = model.config, torch.device(device)
    net = model.net.to(device).train()
    opt = torch.optim.AdamW(
        net.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    x = torch.from_numpy(data.x).to(device)
    cond_all = encode(model.vocab, condition_rows(data.train_conditions())).to(device)
    features = ot_space(data, config)
    history, epoch0, step = [], 0, 0
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        for group in opt.param_groups:  # a resumed run may change them
            group["lr"], group["weight_decay"] = config.train.lr, config.train.weight_decay
        epoch0, step = int(resume_state["epoch"]), int(resume_state["step"])
        # history.csv is written before the checkpoint: rows past it are from a killed epoch
        saved = read_history(Path(run_dir) / keys.HISTORY_FILE) if run_dir else []
        history = [r for r in saved if r["step"] <= step]
        torch.set_rng_state(resume_state["torch_rng"].cpu())
    n_pairs = sum(len(c.perturbed) for c in data.train_conditions())
    steps_per_epoch = -(-n_pairs // config.train.batch_size)
    epochs = resolved_epochs(config.train, steps_per_epoch)
    total = steps_per_epoch * epochs
    bar = tqdm(total=total, initial=step, disable=not progress_bar, desc="train", unit="step")
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    amp = device.type == "cuda"
    stopped = False
    with bar:  # closed on errors too, so an error message starts its own line
        for epoch in range(epoch0, epochs):
            rng = np.random.default_rng([config.seed, epoch])  # pairing is reproducible on resume
            i0, i1, ci = epoch_pairs(data, config, rng, features)
            order = torch.from_numpy(rng.permutation(len(i0)))
            i0, i1, ci = (torch.from_numpy(a)[order].to(device) for a in (i0, i1, ci))
            for s in range(0, len(order), config.train.batch_size):
                rows = slice(s, s + config.train.batch_size)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    l_cont, l_disc = losses(
                        model, x[i0[rows]], x[i1[rows]], cond_all[ci[rows]], config
                    )
                    loss = l_cont + config.bridge.disc_weight * l_disc
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in opt.param_groups:
                    group["lr"] = learning_rate(config.train.lr, step, total)
                opt.step()
                step += 1
                row = {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss_cont": l_cont.item(),
                    "loss_disc": l_disc.item(),
                    "loss": loss.item(),
                    "seconds": round(time.perf_counter() - start, 3),
                }
                if not math.isfinite(row["loss"]):
                    raise _diverged(config, step, epoch + 1, row["loss"], kept=epoch > 0)
                history.append(row)
                bar.update(1)
                bar.set_postfix(cont=f"{row['loss_cont']:.4f}", disc=f"{row['loss_disc']:.4f}")
                if callback:
                    callback(Progress(step, total, epoch + 1, row["loss_cont"], row["loss_disc"]))
                if should_stop and should_stop():
                    stopped = True
                    break
            if run_dir is not None:
                _checkpoint(model, opt, Path(run_dir), epoch + (0 if stopped else 1), step, history)
            if stopped:
                break
    net.eval()
    return history


def learning_rate(base: float, step: int, total: int, floor: float = 0.1) -> float:
    """Cosine decay from ``base`` to ``floor * base`` over ``total`` steps.

    A constant rate left the last weights wherever the last minibatches pushed them: two
    demo runs of 57 and 60 epochs (same seed) differed by 0.2 in held-out e_distance.
    """
    done = min(1.0, step / max(1, total))
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done)))


def _diverged(config: RunConfig, step: int, epoch: int, loss: float, kept: bool) -> ConfigError:
    """The error of a loss or weights that stopped being finite numbers (NaN or infinity)."""
    then = (
        "train again, or resume (--resume --lr) from the last finished epoch, which is kept"
        if kept
        else "train again"
    )
    return ConfigError(
        f"Training diverged: the loss became {loss} at step {step} (epoch {epoch}). "
        f"Lower the learning rate (now {config.train.lr:g}) and {then}."
    )


def _checkpoint(model, opt, run_dir: Path, epoch: int, step: int, history: list[dict]) -> None:
    if not all(torch.isfinite(p).all() for p in model.net.parameters()):
        # never save broken weights over the last good checkpoint
        raise _diverged(model.config, step, epoch, float("nan"), kept=epoch > 1)
    state = model.state(
        optimizer=opt.state_dict(), epoch=epoch, step=step, torch_rng=torch.get_rng_state()
    )
    # history first: a kill between the two leaves extra rows, which a resume drops
    write_history(run_dir / keys.HISTORY_FILE, history)
    save_checkpoint(run_dir / keys.MODEL_FILE, state)


def write_history(path: Path, history: list[dict]) -> None:
    import io

    from .model import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    """The rows of ``history.csv``; none (with a warning) when it is unreadable."""
    if not Path(path).exists():
        return []
    try:
        with open(path) as fh:
            return [
                {
                    k: int(row[k]) if k in ("step", "epoch") else float(row[k])
                    for k in HISTORY_COLUMNS
                }
                for row in csv.DictReader(fh)
            ]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"{path} is unreadable ({exc}); earlier losses are left out.", stacklevel=2)
        return []


def load_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Departures, dict]:
    """The model of a run folder and its raw checkpoint state; `RunError` when unusable."""
    path = Path(run_dir) / keys.MODEL_FILE
    state = load_checkpoint(path, device="cpu")
    try:
        return Departures.from_state(state), state
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        reason = first_line(exc)
        raise RunError(
            f"{path} does not match the network this version of Departures builds "
            f"({type(exc).__name__}: {reason}); it was probably written by an older "
            f"version. Train the run in {path.parent} again with this version."
        ) from exc
