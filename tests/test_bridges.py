"""Bridge maths: the Brownian bridge (bridges/sde.py) and the on/off CTMC (bridges/ctmc.py)."""

import math

import pytest
import torch

from departures_core.bridges import ctmc, sde

SIGMA = 0.2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _endpoints(n: int = 8, g: int = 5, seed: int = 0):
    gen = _gen(seed)
    return torch.rand(n, g, generator=gen) * 3, torch.rand(n, g, generator=gen) * 3


# ---------------------------------------------------------------- SDE: the bridge marginal
@pytest.mark.parametrize("t_value, endpoint", [(0.0, 0), (1.0, 1)])
def test_sample_xt_hits_endpoints_exactly(t_value, endpoint):
    x0, x1 = _endpoints()
    t = torch.full((len(x0), 1), t_value)
    noise = torch.randn(x0.shape, generator=_gen(1)) * 10  # large noise must not leak in
    xt = sde.sample_xt(x0, x1, t, SIGMA, noise=noise)
    assert torch.equal(xt, (x0, x1)[endpoint])
    torch.manual_seed(0)
    assert torch.equal(sde.sample_xt(x0, x1, t, SIGMA), (x0, x1)[endpoint])  # sampled noise


def test_sample_xt_mean_and_variance_at_t03():
    n, t_value = 200_000, 0.3
    x0 = torch.tensor([0.0, 1.0, 2.0, 5.0]).expand(n, 4)
    x1 = torch.tensor([1.0, 1.0, 0.0, 2.5]).expand(n, 4)
    t = torch.full((n, 1), t_value)
    torch.manual_seed(0)
    xt = sde.sample_xt(x0, x1, t, SIGMA).double()

    mean = (1 - t_value) * x0[0].double() + t_value * x1[0].double()
    var = SIGMA**2 * t_value * (1 - t_value)  # 0.0084
    se_mean = math.sqrt(var / n)  # standard error of the sample mean
    se_var = var * math.sqrt(2.0 / (n - 1))  # standard error of the sample variance (normal)
    assert torch.all((xt.mean(0) - mean).abs() < 5 * se_mean)
    assert torch.all((xt.var(0) - var).abs() < 5 * se_var)


def test_mean_and_std_helpers():
    x0, x1 = torch.tensor([[0.0, 4.0]]), torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.25]])
    assert torch.allclose(sde.mean_t(x0, x1, t), torch.tensor([[0.5, 3.0]]))
    assert sde.std_t(t, SIGMA).item() == pytest.approx(SIGMA * math.sqrt(0.25 * 0.75))
    assert sde.std_t(torch.tensor([[0.0], [1.0]]), SIGMA).abs().max().item() == 0.0


# ---------------------------------------------------------------- SDE: sampling and loss
def test_euler_maruyama_step_without_noise_follows_the_drift():
    x_t, x1_hat = _endpoints(seed=3)
    t, h = torch.full((len(x_t), 1), 0.4), 0.05
    out = sde.euler_maruyama_step(x_t, x1_hat, t, h, SIGMA, torch.zeros_like(x_t))
    assert torch.allclose(out, x_t + h * (x1_hat - x_t) / (1 - 0.4), atol=1e-6)
    assert torch.allclose(sde.drift(x1_hat, x_t, t), (x1_hat - x_t) / 0.6, atol=1e-6)


def test_euler_maruyama_step_noise_scale_and_last_step():
    x_t, x1_hat = _endpoints(seed=4)
    noise = torch.randn(x_t.shape, generator=_gen(5))
    t, h = torch.full((len(x_t), 1), 0.2), 0.1
    with_noise = sde.euler_maruyama_step(x_t, x1_hat, t, h, SIGMA, noise)
    without = sde.euler_maruyama_step(x_t, x1_hat, t, h, SIGMA, torch.zeros_like(noise))
    assert torch.allclose(with_noise - without, SIGMA * math.sqrt(h) * noise, atol=1e-6)
    # a step of h = 1 - t without noise lands on the predicted endpoint
    t_last = torch.full((len(x_t), 1), 0.75)
    landed = sde.euler_maruyama_step(x_t, x1_hat, t_last, 0.25, SIGMA, torch.zeros_like(noise))
    assert torch.allclose(landed, x1_hat, atol=1e-5)


def test_masked_mse_value_and_ignores_inactive_genes():
    x1 = torch.tensor([[1.0, 2.0, 0.0, 3.0]])
    x1_hat = torch.tensor([[2.0, 2.0, 5.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    # (1 + 0 + masked + 4) / 4 genes
    assert sde.masked_mse(x1_hat, x1, mask).tolist() == pytest.approx([5.0 / 4])
    changed = x1_hat.clone()
    changed[0, 2] = -100.0  # only a masked gene changes
    assert torch.equal(sde.masked_mse(changed, x1, mask), sde.masked_mse(x1_hat, x1, mask))
    assert sde.masked_mse(x1_hat, x1, torch.zeros_like(mask)).item() == 0.0
    assert sde.masked_mse(x1_hat, x1, mask).shape == (1,)  # one value per cell


# ---------------------------------------------------------------- CTMC
def _binary(n: int, g: int, seed: int):
    gen = _gen(seed)
    d0 = (torch.rand(n, g, generator=gen) < 0.5).float()
    return d0, (torch.rand(n, g, generator=gen) < 0.5).float()


def _none_switched(d):
    return torch.zeros(d.shape, dtype=torch.bool)


def test_switched_genes_keep_their_state():
    d = _binary(300, 200, seed=5)[0]
    switched = torch.rand(d.shape, generator=_gen(6)) < 0.5
    # the last step makes every unswitched gene jump; p1 = 1 - d flips each one that does
    out, now = ctmc.step(d, switched, 1.0 - d, 0.9, 0.1, _gen(7))
    assert torch.equal(out[switched], d[switched])
    assert torch.equal(out[~switched], 1.0 - d[~switched])
    assert torch.all(now)


def test_switch_times_are_uniform_and_each_gene_switches_once():
    # the sampler reproduces the mixture path: the fraction of genes in their d1 state at
    # time t is t, so P(d_t = d1) matches ctmc.sample_dt at every step
    n, g, steps = 400, 100, 10
    h = 1.0 / steps
    d = torch.zeros(n, g)
    switched = _none_switched(d)
    gen = _gen(9)
    for k in range(steps):
        d, switched = ctmc.step(d, switched, torch.ones_like(d), k * h, h, gen)
        frac = d.double().mean().item()
        t_next = (k + 1) * h
        assert abs(frac - t_next) < 5 * math.sqrt(max(t_next * (1 - t_next), 1e-3) / (n * g))
        assert torch.equal(switched, d.bool())  # p1 = 1: switched genes are exactly the on ones


def test_sample_dt_endpoints():
    d0, d1 = _binary(64, 50, seed=0)
    assert torch.equal(ctmc.sample_dt(d0, d1, torch.zeros(64, 1), _gen(1)), d0)
    assert torch.equal(ctmc.sample_dt(d0, d1, torch.ones(64, 1), _gen(1)), d1)


def test_sample_dt_mixture_fraction_at_t04():
    n, g, t_value = 2_000, 100, 0.4
    d0, d1 = _binary(n, g, seed=2)
    dt = ctmc.sample_dt(d0, d1, torch.full((n, 1), t_value), _gen(3))
    differ = d0 != d1
    assert torch.all((dt == d0) | (dt == d1))  # never leaves {d0, d1}
    frac = (dt[differ] == d1[differ]).double().mean().item()
    m = int(differ.sum())
    assert abs(frac - t_value) < 5 * math.sqrt(t_value * (1 - t_value) / m)


def test_jump_probability_formula():
    assert ctmc.jump_probability(0.0, 0.02) == pytest.approx(0.02)
    assert ctmc.jump_probability(0.5, 0.1) == pytest.approx(0.2)
    assert ctmc.jump_probability(0.9, 0.05) == pytest.approx(0.5)
    assert ctmc.jump_probability(0.95, 0.1) == 1.0  # capped at 1
    assert ctmc.jump_probability(1.0, 0.1) == 1.0


@pytest.mark.parametrize("steps", [1, 3, 10, 50, 100])
def test_jump_probability_is_one_on_the_last_step(steps):
    h = 1.0 / steps
    t_last = (steps - 1) * h  # as the sampler computes it
    assert ctmc.jump_probability(t_last, h) == pytest.approx(1.0, abs=1e-9)
    # and in effect every gene jumps: p1 = 1 turns every gene on
    d = torch.zeros(200, 300)
    out, switched = ctmc.step(d, _none_switched(d), torch.ones_like(d), t_last, h, _gen(steps))
    assert torch.all(out == 1) and torch.all(switched)


def test_step_with_p1_ones_on_last_step_sets_every_gene_to_one():
    h = 0.1
    d = _binary(100, 100, seed=4)[0]
    out, _ = ctmc.step(d, _none_switched(d), torch.ones_like(d), 1.0 - h, h, _gen(0))
    assert torch.equal(out, torch.ones_like(d))
    out0, _ = ctmc.step(d, _none_switched(d), torch.zeros_like(d), 1.0 - h, h, _gen(0))
    assert torch.equal(out0, torch.zeros_like(d))


def test_step_jump_fraction_matches_h_over_one_minus_t():
    n, g, t, h = 1_000, 200, 0.5, 0.1
    d = torch.zeros(n, g)
    # a jump always lands on 1
    out, switched = ctmc.step(d, _none_switched(d), torch.ones_like(d), t, h, _gen(7))
    assert torch.equal(switched, out.bool())
    frac = out.double().mean().item()
    p = h / (1 - t)  # 0.2
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / (n * g))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_step_is_reproducible_with_a_generator():
    d = _binary(50, 40, seed=8)[0]
    p1 = torch.full_like(d, 0.3)
    none = _none_switched(d)
    a, _ = ctmc.step(d, none, p1, 0.3, 0.2, _gen(11))
    b, _ = ctmc.step(d, none, p1, 0.3, 0.2, _gen(11))
    c, _ = ctmc.step(d, none, p1, 0.3, 0.2, _gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rate_sign_and_magnitude():
    p1 = torch.tensor([[0.3, 0.3, 1.0, 0.0]])
    d_t = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    r = ctmc.rate(p1, d_t, 0.5)
    # off gene: switch-on rate p/(1-t) > 0; on gene: -(1-p)/(1-t) < 0; settled genes: 0
    assert r[0].tolist() == pytest.approx([0.6, -1.4, 0.0, 0.0])
    # the rate grows as t -> 1
    assert ctmc.rate(p1, d_t, 0.9)[0, 0].item() == pytest.approx(3.0)
