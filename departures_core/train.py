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

from . import distributed, keys, ot
from .bridges import ctmc, sde
from .config import RunConfig, resolved_batch, resolved_epochs
from .data import Expression, PerturbationData
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
        small = len(cond.perturbed) < 2 * min_cells or n_val < min_cells // 2
        if cond.held_out or cond.validation or small:
            conditions.append(cond)
            continue
        val = np.zeros(len(cond.perturbed), dtype=bool)
        val[rng.choice(len(cond.perturbed), n_val, replace=False)] = True
        held[(cond.perturbation, cond.cell_type, cond.dose)] = cond.perturbed[val]
        conditions.append(dataclasses.replace(cond, perturbed=cond.perturbed[~val]))
    return dataclasses.replace(data, conditions=conditions), held


def ot_space(data: PerturbationData, config: RunConfig):
    """The coordinates of every cell that the OT cost is measured in (genes or PCs)."""
    if config.ot.space == "pca" and config.ot.pairing == "ot":
        return ot.pca_features(data.x, config.ot.n_pcs, seed=config.seed)
    return data.x


def epoch_pairs(
    data: PerturbationData,
    config: RunConfig,
    rng: np.random.Generator,
    features=None,
    share: list[int] | None = None,
):
    """OT (or random) pairs of every training condition: control rows, perturbed rows, condition.

    ``features`` are the cells' coordinates for the cost (`ot_space`; the genes when None);
    rows index them as dense arrays, one condition at a time. ``share`` limits the pairing
    to those training conditions (by position; a torchrun process pairs its own share)."""
    c = config.ot
    z = data.x if features is None else features
    conditions = data.train_conditions()
    i0, i1, cond = [], [], []
    for k in range(len(conditions)) if share is None else share:
        condition = conditions[k]
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
    if not i0:
        return (np.zeros(0, dtype=np.int64),) * 3
    return np.concatenate(i0), np.concatenate(i1), np.concatenate(cond)


class Rows:
    """Dense expression rows on the training device, for a minibatch of row indices.

    Dense data, or sparse data whose dense copy fits in a quarter of a GPU's free memory,
    lives on the device (made dense there chunk by chunk, never whole on the host). Other
    sparse data stays CSR on the host: each batch is made dense alone and copied through
    pinned memory to a GPU."""

    def __init__(self, x: Expression, device: torch.device):
        self.device, self.tensor, self.csr = device, None, None
        rows, genes = x.shape
        if not x.sparse:
            self.tensor = torch.from_numpy(x.matrix()).to(device)  # CPU: shares the memory
        elif device.type == "cuda" and rows * genes * 4 < 0.25 * torch.cuda.mem_get_info(device)[0]:
            self.tensor = torch.empty(rows, genes, device=device)
            for start, chunk in x.chunks():
                self.tensor[start : start + len(chunk)] = torch.from_numpy(chunk).to(device)
        else:
            self.csr = x.matrix()

    def __call__(self, index: np.ndarray) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[torch.from_numpy(index).to(self.device, non_blocking=True)]
        batch = torch.from_numpy(self.csr[index].toarray())
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch


class _Loss(torch.nn.Module):
    """The training losses as a module's forward, what DistributedDataParallel wraps."""

    def __init__(self, model: Departures):
        super().__init__()
        self.net, self.model = model.net, [model]  # a list: not a submodule twice

    def forward(self, x0, x1, cond):
        return losses(self.model[0], x0, x1, cond, self.model[0].config)


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


LOG_EVERY = 25  # steps between reading the losses back from the device (a host sync)


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
    current step and saves a checkpoint. Under torchrun (`distributed`) each process pairs
    and trains on its share of the conditions with the same number of steps, gradients are
    averaged, and only rank 0 checkpoints, reports and shows progress.
    """
    from tqdm.auto import tqdm

    ctx = distributed.context()
    config, device = model.config, torch.device(device)
    if config.train.threads:  # the CLI caps a training process's threads (`threads_for`)
        torch.set_num_threads(config.train.threads)
    device = distributed.setup(ctx, device)
    batch, lr = resolved_batch(config.train, device.type)
    net = model.net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.train.weight_decay)
    step_losses = _Loss(model)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        step_losses = DistributedDataParallel(
            step_losses, device_ids=[device.index] if device.type == "cuda" else None
        )
    rows_of = Rows(data.x, device)
    conditions = data.train_conditions()
    cond_all = encode(model.vocab, condition_rows(conditions)).to(device)
    share = ctx.share([len(c.perturbed) for c in conditions]) if ctx.active else None
    features = ot_space(data, config)
    history, epoch0, step = [], 0, 0
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        for group in opt.param_groups:  # a resumed run may change them
            group["lr"], group["weight_decay"] = lr, config.train.weight_decay
        epoch0, step = int(resume_state["epoch"]), int(resume_state["step"])
        # history.csv is written before the checkpoint: rows past it are from a killed epoch
        saved = read_history(Path(run_dir) / keys.HISTORY_FILE) if run_dir else []
        history = [r for r in saved if r["step"] <= step]
        torch.set_rng_state(resume_state["torch_rng"].cpu())
    if ctx.rank:  # the other processes draw their own times and noise
        torch.manual_seed(config.seed * 1_000_003 + ctx.rank * 7919 + step)
    n_pairs = sum(len(c.perturbed) for c in conditions)
    steps_per_epoch = -(-n_pairs // (batch * ctx.world))
    epochs = resolved_epochs(config.train, steps_per_epoch)
    total = steps_per_epoch * epochs
    writes = ctx.main and run_dir is not None
    bar = tqdm(
        total=total,
        initial=step,
        disable=not (progress_bar and ctx.main),
        desc="train",
        unit="step",
    )
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    ema = None
    if config.train.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        decay = ema_decay(config.train.ema, total - step)
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay))
    amp = device.type == "cuda"
    stopped = False
    pending: list[tuple[int, int, torch.Tensor, float]] = []

    def drain() -> None:
        """Read the pending steps' losses back (one host sync) into the history."""
        if not pending:
            return
        values = torch.stack([v for _, _, v, _ in pending]).float().cpu().tolist()
        for (s_, e_, _, sec), (l_cont, l_disc, loss) in zip(pending, values, strict=True):
            if not math.isfinite(loss):
                raise _diverged(config, s_, e_, loss, kept=e_ > 1)
            history.append(
                {
                    "step": s_,
                    "epoch": e_,
                    "loss_cont": l_cont,
                    "loss_disc": l_disc,
                    "loss": loss,
                    "seconds": round(sec, 3),
                }
            )
        last = history[-1]
        bar.update(len(pending))
        bar.set_postfix(cont=f"{last['loss_cont']:.4f}", disc=f"{last['loss_disc']:.4f}")
        if callback and ctx.main:
            callback(
                Progress(last["step"], total, last["epoch"], last["loss_cont"], last["loss_disc"])
            )
        pending.clear()

    with bar:  # closed on errors too, so an error message starts its own line
        for epoch in range(epoch0, epochs):
            # pairing is reproducible on resume; each torchrun process pairs its own share
            seed = [config.seed, epoch] + ([ctx.rank] if ctx.active else [])
            rng = np.random.default_rng(seed)
            i0, i1, ci = epoch_pairs(data, config, rng, features, share)
            order = rng.permutation(len(i0))
            if ctx.active:  # every process takes the same number of steps
                order = np.resize(order, steps_per_epoch * batch) if len(order) else order
            i0, i1 = i0[order], i1[order]
            ci = torch.from_numpy(ci[order]).to(device)
            for s in range(0, len(order), batch):
                rows = slice(s, s + batch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    l_cont, l_disc = step_losses(
                        rows_of(i0[rows]), rows_of(i1[rows]), cond_all[ci[rows]]
                    )
                    loss = l_cont + config.bridge.disc_weight * l_disc
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in opt.param_groups:
                    group["lr"] = learning_rate(lr, step, total)
                opt.step()
                if ema is not None:
                    ema.update_parameters(net)
                step += 1
                losses_now = torch.stack([l_cont.detach(), l_disc.detach(), loss.detach()])
                pending.append((step, epoch + 1, losses_now, time.perf_counter() - start))
                if len(pending) >= LOG_EVERY:
                    drain()
                if should_stop and _stop_requested(should_stop, ctx, step, device):
                    stopped = True
                    break
            drain()
            if ema is not None and (stopped or epoch + 1 == epochs):
                net.load_state_dict(ema.module.state_dict())  # the model keeps the average
            if writes:
                _checkpoint(model, opt, Path(run_dir), epoch + (0 if stopped else 1), step, history)
            if stopped:
                break
    net.eval()
    return history


def ema_decay(decay: float, steps: int) -> float:
    """The decay of the weights' moving average over a training of ``steps`` optimiser
    steps: as configured, but averaging over at most a third of them (``1 - decay >= 3 /
    steps``), so that a short training is not averaged with its first, untrained weights."""
    return min(float(decay), max(0.0, 1.0 - 3.0 / max(int(steps), 1)))


def _stop_requested(
    should_stop: Callable[[], bool], ctx: distributed.Context, step: int, device: torch.device
) -> bool:
    """Whether to stop after this step. Under torchrun rank 0 asks every `LOG_EVERY` steps and
    tells the others (they must stop at the same step)."""
    if not ctx.active:
        return should_stop()
    if step % LOG_EVERY:
        return False
    import torch.distributed as dist

    flag = torch.tensor([float(should_stop()) if ctx.main else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


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
