"""Brownian bridge with constant diffusion ``sigma`` between paired cells x0 and x1."""

from __future__ import annotations

import torch
from torch import Tensor


def mean_t(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Bridge mean ``(1 - t) x0 + t x1``; ``t`` has shape (n, 1)."""
    return (1.0 - t) * x0 + t * x1


def std_t(t: Tensor, sigma: float) -> Tensor:
    """Bridge standard deviation ``sigma * sqrt(t (1 - t))``."""
    return sigma * torch.sqrt(torch.clamp(t * (1.0 - t), min=0.0))


def sample_xt(
    x0: Tensor, x1: Tensor, t: Tensor, sigma: float, noise: Tensor | None = None
) -> Tensor:
    """Draw ``x_t`` from the bridge marginal.

    Parameters
    ----------
    x0, x1 : Tensor, shape (n, n_genes)
    t : Tensor, shape (n, 1)
    noise : Tensor, shape (n, n_genes), optional
        Standard normal draws; sampled when not given.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    return mean_t(x0, x1, t) + std_t(t, sigma) * noise


def drift(x1_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Bridge drift towards the predicted endpoint, ``(x1_hat - x_t) / (1 - t)``."""
    return (x1_hat - x_t) / (1.0 - t)


def euler_maruyama_step(
    x_t: Tensor, x1_hat: Tensor, t: Tensor, h: float, sigma: float, noise: Tensor
) -> Tensor:
    """One Euler–Maruyama step ``x + h v + sigma sqrt(h) eps``."""
    return x_t + h * drift(x1_hat, x_t, t) + sigma * (h**0.5) * noise


def masked_mse(x1_hat: Tensor, x1: Tensor, active: Tensor) -> Tensor:
    """Mean over genes of ``active * (x1_hat - x1)**2`` — the loss masked to active genes."""
    return (active * (x1_hat - x1) ** 2).mean(dim=1)
