"""Sampling: Euler–Maruyama for the SDE bridge, switch-time sampling for the CTMC bridge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .bridges import ctmc, sde
from .config import BridgeConfig
from .model import Departures, encode
from .nn import CondTensors, DeparturesNet


@dataclass
class Simulation:
    """Endpoints (and optionally whole paths) of simulated bridges.

    Attributes
    ----------
    prediction : ndarray, shape (n, n_genes)
        ``max(x1_hat, 0) * d1_hat`` — the predicted perturbed cells.
    x1_hat : ndarray, shape (n, n_genes)
        Endpoint of the continuous bridge.
    d1_hat : ndarray, shape (n, n_genes) or None
        Endpoint of the on/off bridge (None without the discrete bridge).
    t : ndarray, shape (steps + 1,)
    x_path, d_path : ndarray, shape (steps + 1, n, n_genes) or None
        States at every time point when a trajectory was requested.
    """

    prediction: np.ndarray
    x1_hat: np.ndarray
    d1_hat: np.ndarray | None
    t: np.ndarray
    x_path: np.ndarray | None = None
    d_path: np.ndarray | None = None
    unchanged: np.ndarray | None = None  # (n,) bool: cells predicted not to respond
    # (perturbation, cell_type, dose) -> (unaffected fraction, where it comes from)
    responders: dict | None = None
    responders_shift: tuple = ()  # cell types whose non-responders carry their shared shift
    # (perturbation, cell_type, dose) -> (factor the bridges' cells were spread by, whether
    # it was measured in that cell type), for runs that fitted one (`spread.fit`)
    spread: dict | None = None
    # (perturbation, cell_type, dose) -> mean share of genes kept per cell, for conditions
    # whose perturbation was trained only in other cell types (`transfer.fit`)
    transferred: dict | None = None
    # (perturbation, cell_type, dose) -> the untrained perturbation's measured genes, set as
    # the training perturbations' targets changed (`responders.set_targets`)
    targets: dict | None = None


@torch.no_grad()
def _simulate_chunk(
    net: DeparturesNet,
    x0: Tensor,
    cond: CondTensors,
    *,
    steps: int,
    sigma: float,
    generator: torch.Generator,
    trajectory: bool,
    onoff: str = "endpoint",
):
    """The on/off bridge first (it needs only the control cell), then the expression bridge
    given its endpoint ``d1``, as in training (see `DeparturesNet`)."""
    h = 1.0 / steps
    cond_emb = net.encoder(cond)
    times = [torch.full((len(x0), 1), k * h, device=x0.device) for k in range(steps)]
    embs = [net.embed(cond_emb, tt) for tt in times]
    d0 = d = (x0 > 0).to(x0.dtype)
    ds = [d0.cpu()]
    if net.disc is not None and onoff == "endpoint":
        # every gene's endpoint from p(d1 | control cell), then the mixture path to it
        none = torch.zeros(d0.shape, dtype=torch.bool, device=d0.device)
        p1 = torch.sigmoid(net.activation_logits(d0, none, x0, embs[0]))
        u = torch.rand(d0.shape, generator=generator, device=d0.device)
        d = (u < p1).to(d0.dtype)
        if trajectory:
            tau = torch.rand(d0.shape, generator=generator, device=d0.device)
            ds += [torch.where(tau < (k + 1) * h, d, d0).cpu() for k in range(steps)]
    elif net.disc is not None:
        switched = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
        for k in range(steps):
            p1 = torch.sigmoid(net.activation_logits(d, switched, x0, embs[k]))
            d, switched = ctmc.step(d, switched, p1, k * h, h, generator)  # all switched at 1
            if trajectory:
                ds.append(d.cpu())
    d1 = d if net.disc is not None else None
    x = x0.clone()
    xs = [x.cpu()]
    for k in range(steps):
        x1_hat = net.endpoint(x, x0, times[k], embs[k], d1)
        if k == steps - 1:
            x = x1_hat
        else:
            # inactive endpoint genes are carried to 0, exactly as the training bridge to x1
            target = x1_hat * d1 if d1 is not None else x1_hat
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            x = sde.euler_maruyama_step(x, target, times[k], h, sigma, noise)
        if trajectory:
            xs.append(x.cpu())
    if trajectory and d1 is None:
        ds = ds * (steps + 1)
    return x, d1, xs, ds


def simulate(
    net: DeparturesNet,
    x0: np.ndarray,
    cond: CondTensors,
    *,
    steps: int = 50,
    sigma: float = BridgeConfig.sigma,
    seed: int = 0,
    trajectory: bool = False,
    device: torch.device | str = "cpu",
    chunk: int = 2048,
    onoff: str = "endpoint",
) -> Simulation:
    """Simulate both bridges from control cells ``x0`` (shape (n, n_genes)) under ``cond``.

    ``cond`` has one row per cell. The same ``seed`` gives the same samples. Non-responders
    are added afterwards (`keep_unchanged`, as `runs.simulate_from` does).

    ``onoff`` says how the on/off endpoint ``d1`` is drawn. ``"endpoint"`` (the default):
    every gene at once from the network's p(d1 = 1 | control cell) (nothing switched yet),
    then each gene switches at a uniform time - the mixture path to that endpoint.
    ``"sequential"``: each gene at its own switch time from p(d1 | the genes switched
    before it) (`ctmc.step`), which carries gene-gene dependence but compounds the
    network's errors over 50 draws: it moved the active genes per cell of training
    conditions (bridges alone) by -10 % on Kang and +8 % on Zhao where the endpoint draw
    stays within 3 % (one seed each), and the median total expression on Kang (3 seeds,
    with non-responders) by -3.1 % against -1.9 %.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    net = net.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out_x, out_d, paths_x, paths_d = [], [], [], []
    for start in range(0, len(x0), chunk):
        rows = slice(start, start + chunk)
        x0_t = torch.as_tensor(x0[rows], dtype=torch.float32, device=device)
        x, d, xs, ds = _simulate_chunk(
            net,
            x0_t,
            cond[rows].to(device),
            steps=steps,
            sigma=sigma,
            generator=gen,
            trajectory=trajectory,
            onoff=onoff,
        )
        out_x.append(x.cpu())
        out_d.append(d.cpu() if d is not None else None)
        if trajectory:
            paths_x.append(torch.stack(xs, 0))
            paths_d.append(torch.stack(ds, 0))
    x1_hat = torch.cat(out_x).numpy()
    d1_hat = torch.cat(out_d).numpy() if out_d[0] is not None else None
    pred = np.maximum(x1_hat, 0.0) * (d1_hat if d1_hat is not None else 1.0)
    sim = Simulation(pred.astype(np.float32), x1_hat, d1_hat, np.linspace(0.0, 1.0, steps + 1))
    if trajectory:
        sim.x_path = torch.cat(paths_x, 1).numpy()
        sim.d_path = torch.cat(paths_d, 1).numpy().astype(np.uint8)
    return sim


def simulate_rows(
    model: Departures,
    x0: np.ndarray,
    rows: list[tuple[str, str, float]],
    *,
    steps: int,
    seed: int = 0,
    trajectory: bool = False,
    device: torch.device | str = "cpu",
) -> Simulation:
    """`simulate` a model's bridges from control cells ``x0``, one condition
    ``(perturbation, cell_type, dose)`` per row, with the model's bridge settings."""
    bridge = model.config.bridge
    return simulate(
        model.net,
        x0,
        encode(model.vocab, rows),
        steps=steps,
        sigma=bridge.sigma,
        seed=seed,
        trajectory=trajectory,
        device=device,
        onoff=bridge.onoff,
    )


def draw_unchanged(
    groups: list[np.ndarray],
    fractions: list[float],
    n: int,
    seed: int,
    sources: np.ndarray | None = None,
):
    """Which of ``n`` cells do not respond: in each group of rows (one condition), a random
    ``fraction`` of them - exactly ``floor(fraction * size)`` or one more, with the
    probability that makes the expected count ``fraction * size``. Drawing a count rather
    than each cell on its own keeps the share shown equal to the fraction, and the
    prediction's mean shift from sampling noise.

    ``sources`` (one id per cell, e.g. the control cell it starts from) stratifies the draw:
    the copies of one source get ``floor`` or ``ceil`` of ``fraction`` times their number,
    so the non-responders and the responders start from the same control cells rather than
    from a random split of them (systematic sampling over the cells ordered by source)."""
    rng = np.random.default_rng([int(seed), 1])
    keep = np.zeros(n, dtype=bool)
    sources = None if sources is None else np.asarray(sources)
    for rows, w in zip(groups, fractions, strict=True):
        rows = np.asarray(rows)
        w = float(np.clip(w, 0.0, 1.0))
        if sources is None:
            order = rng.permutation(len(rows))
        else:
            _, source = np.unique(sources[rows], return_inverse=True)
            rank = rng.permutation(source.max() + 1 if len(source) else 0)[source]
            order = np.lexsort((rng.random(len(rows)), rank))
        # systematic sampling with a random start: floor(n w) or one more cells in all,
        # and within any run of consecutive cells (one source's copies) as evenly
        start = rng.random()
        position = np.arange(len(rows))
        take = np.floor((position + 1) * w + start) > np.floor(position * w + start)
        keep[rows[order[take]]] = True
    return keep


def keep_unchanged(
    sim: Simulation, x0: np.ndarray, keep: np.ndarray, end: np.ndarray | None = None
) -> None:
    """Replace the cells ``keep`` (bool, shape (n,)) by their control cells, in place: they end
    at ``end`` (default ``x0``; same on/off state) and move there in a straight line."""
    sim.unchanged = keep
    if not keep.any():
        return
    start = x0[keep]
    stop = start if end is None else end[keep]
    sim.prediction[keep] = stop
    sim.x1_hat[keep] = stop
    if sim.d1_hat is not None:
        sim.d1_hat[keep] = (stop > 0).astype(sim.d1_hat.dtype)
    if sim.x_path is not None:
        t = np.asarray(sim.t, dtype=np.float32)[:, None, None]
        sim.x_path[:, keep] = start[None] + t * (stop - start)[None]
        sim.d_path[:, keep] = (sim.x_path[:, keep] > 0).astype(np.uint8)


def keep_genes_unchanged(
    sim: Simulation, x0: np.ndarray, keep: np.ndarray, end: np.ndarray
) -> None:
    """Give the (cell, gene) entries ``keep`` (bool, shape (n, n_genes)) their unperturbed
    value ``end`` in place, reached in a straight line from ``x0`` as a non-responder is."""
    if not keep.any():
        return
    sim.prediction[keep] = end[keep]
    sim.x1_hat[keep] = end[keep]
    if sim.d1_hat is not None:
        sim.d1_hat[keep] = (end[keep] > 0).astype(sim.d1_hat.dtype)
    if sim.x_path is not None:
        t = np.asarray(sim.t, dtype=np.float32)[:, None, None]
        line = x0[None] + t * (end - x0)[None]
        sim.x_path[:] = np.where(keep[None], line, sim.x_path)
        sim.d_path[:] = np.where(keep[None], line > 0, sim.d_path).astype(sim.d_path.dtype)
