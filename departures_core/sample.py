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


# nearest control cells a repeated non-responder may take genes from (`fresh_unchanged`)
NEIGHBOURS = 10


def fresh_unchanged(
    x0: np.ndarray, keep: np.ndarray, groups: list[np.ndarray], sources: np.ndarray, seed: int
) -> np.ndarray:
    """The unperturbed state of each cell, shape (n, n_genes): its control cell ``x0``, except
    for a non-responder (``keep``) whose control cell (``sources``) an earlier non-responder
    of its group (one condition) already is. That one is a fresh draw: each gene from its
    own control cell or, with probability 1/2, from a nearby control cell of the group's
    non-responders repeated the same way (`_partners`).

    Why this rule: a second copy of a control cell would be a duplicate cell, and the first
    copies already use every control cell the draw spreads them over (`draw_unchanged`).
    Taking the partners from the repeated control cells themselves, each as often as it is
    repeated, gives every gene's values over the fresh cells exactly the distribution they
    have over those controls (mean, share active, spread), and each value is one a control
    cell has; near partners (about 3 in 4 among the 10 nearest on the demo) keep most of
    the genes' joint structure. Interpolating towards a k-nearest neighbour (x_i + u (x_j -
    x_i), a gene zero only where both are) does not: it raised the share of cells expressing
    a gene by 4-11 points on the demo's cell lines (20 copies), and, as a few hub cells are
    most cells' neighbours in 500 genes, U87MG's total expression by 3 %.
    """
    base = np.array(x0, dtype=np.float32, copy=True)
    rng = np.random.default_rng([int(seed), 4])
    for rows in groups:
        kept = np.asarray(rows)[keep[np.asarray(rows)]]
        _, first = np.unique(sources[kept], return_index=True)
        repeat = kept[np.setdiff1d(np.arange(len(kept)), first)]
        if len(repeat) == 0 or len(first) < 2:  # one control cell: nothing else to draw from
            continue
        order = _partners(x0[repeat], sources[repeat], rng)
        partner = np.where(order >= 0, repeat[np.maximum(order, 0)], -1)
        # a control cell repeated more often than all others together cannot lend to itself:
        # its rows left over take a random other non-responding control cell of the condition
        lenders = kept[first]
        for i in np.flatnonzero(partner < 0):
            other = lenders[sources[lenders] != sources[repeat[i]]]
            partner[i] = other[rng.integers(len(other))]
        take = rng.random(base[repeat].shape) < 0.5
        base[repeat] = np.where(take, x0[partner], x0[repeat])
    return base


def _partners(x: np.ndarray, sources: np.ndarray, rng) -> np.ndarray:
    """A permutation of the rows ``x`` (one per repeated non-responder, shape (m, n_genes))
    that gives each row a row of another control cell (``sources``): in random order, each
    takes a row of the nearest of its control cell's `NEIGHBOURS` with rows left, else of a
    random control cell with rows left. Each control cell lends itself as often as it is
    repeated, so the lent genes have the repeated cells' distribution exactly. -1 for rows
    left with only their own control cell (one repeated more than all others together)."""
    _, first, source = np.unique(sources, return_index=True, return_inverse=True)
    near = _nearest(x[first], min(NEIGHBOURS, len(first) - 1))
    left = np.bincount(source)
    pool = [list(rows) for rows in np.split(np.argsort(source, kind="stable"), left.cumsum()[:-1])]
    partner = np.full(len(x), -1)
    for row in rng.permutation(len(x)):
        own = source[row]
        lender = next((s for s in near[own] if left[s]), None)
        if lender is None:
            others = np.flatnonzero(left > 0)
            others = others[others != own]
            lender = others[rng.integers(len(others))] if len(others) else None
        if lender is not None:
            left[lender] -= 1
            partner[row] = pool[lender].pop()
            continue
        # only its own control cell is left: trade with a row whose partner it can take
        done = np.flatnonzero((partner >= 0) & (source != own))
        done = done[source[partner[done]] != own]
        if len(done):
            swap = done[rng.integers(len(done))]
            left[own] -= 1
            partner[row], partner[swap] = partner[swap], pool[own].pop()
    return partner


def _nearest(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """The ``k`` nearest other rows of each row of ``x`` (Euclidean), nearest first."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x**2).sum(1)
    out = []
    for start in range(0, len(x), chunk):
        rows = np.arange(start, min(start + chunk, len(x)))
        d = sq[rows, None] + sq[None] - 2 * x[rows] @ x.T
        d[np.arange(len(rows)), rows] = np.inf
        out.append(np.argsort(d, 1, kind="stable")[:, :k])
    return np.concatenate(out)
