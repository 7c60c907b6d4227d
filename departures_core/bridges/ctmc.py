"""On/off CTMC bridge per gene with the mixture path ``d_t = d1 w.p. t, else d0``."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_dt(
    d0: Tensor, d1: Tensor, t: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Each gene of ``d_t`` is ``d1`` with probability ``t``, else ``d0``. ``t``: shape (n, 1)."""
    u = torch.rand(d0.shape, generator=generator, device=d0.device, dtype=t.dtype)
    return torch.where(u < t, d1, d0)


def jump_probability(t: float, h: float) -> float:
    """Probability that a gene jumps in ``[t, t + h)``: ``min(1, h / (1 - t))``."""
    return 1.0 if t >= 1.0 else min(1.0, h / (1.0 - t))


def rate(p1: Tensor, d_t: Tensor, t: float) -> Tensor:
    """Rate of moving to state 1, ``u_t(a -> 1) = (p(d1 = 1) - 1[a = 1]) / (1 - t)``.

    Positive entries are rates of switching on, negative ones (for genes at 1) are
    minus the rates of switching off.
    """
    return (p1 - d_t) / (1.0 - t)


def step(
    d_t: Tensor, p1: Tensor, t: float, h: float, generator: torch.Generator | None = None
) -> Tensor:
    """One CTMC step: each gene jumps, w.p. ``min(1, h / (1 - t))``, to a draw from ``p1``."""
    u_jump = torch.rand(d_t.shape, generator=generator, device=d_t.device)
    u_draw = torch.rand(d_t.shape, generator=generator, device=d_t.device)
    target = (u_draw < p1).to(d_t.dtype)
    return torch.where(u_jump < jump_probability(t, h), target, d_t)
