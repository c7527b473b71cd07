"""Linear-path flow matching (loss, time sampling) and the Euler/Heun ODE samplers with shift and guidance."""
from __future__ import annotations

import math

import pytest
import torch

from models.dit import create_dit
from models.transport import (
    Transport,
    apply_cfg,
    interpolate,
    make_noise,
    sample_ode,
    sampling_grid,
    shift_timesteps,
    velocity_target,
)


def test_path_endpoints_and_velocity():
    x0, x1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(interpolate(x0, x1, torch.zeros(2)), x0)  # noise at t = 0
    assert torch.equal(interpolate(x0, x1, torch.ones(2)), x1)  # data at t = 1
    mid = interpolate(x0, x1, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mid[0], 0.25 * x1[0] + 0.75 * x0[0])
    torch.testing.assert_close(velocity_target(x0, x1), x1 - x0)


def test_loss_is_per_sample_and_zero_for_the_true_velocity():
    transport = Transport(time_sampling="uniform", use_cosine_loss=True)
    x1 = torch.randn(4, 3, 4, 4)
    noise = torch.randn_like(x1)
    exact = transport.training_losses(lambda x_t, t: x1 - noise, x1, noise=noise)
    assert exact["loss"].shape == (4,)
    assert exact["loss"].abs().max() < 1e-5  # mse 0 and cosine 0
    zero = transport.training_losses(lambda x_t, t: torch.zeros_like(x_t), x1, noise=noise)
    torch.testing.assert_close(zero["mse"], (x1 - noise).pow(2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(zero["cosine"], torch.ones(4))  # cosine with a zero vector is 0 -> 1 − 0
    with pytest.raises(ValueError, match="does not match"):
        transport.training_losses(lambda x_t, t: x_t[:, :2], x1)


def test_constant_velocity_is_learned():
    """Data = a fixed point c; the best velocity independent of x_t and t is E[c − x0] = c, leaving mse = 1."""
    torch.manual_seed(0)
    c = torch.tensor([2.0, -1.0, 0.5])
    velocity = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([velocity], lr=0.05)
    transport = Transport()  # logit-normal times
    for _ in range(300):
        x1 = c.expand(64, 3).reshape(64, 3, 1, 1)
        loss = transport.training_losses(lambda x_t, t: velocity.view(1, 3, 1, 1).expand_as(x_t), x1)["loss"]
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    assert (velocity.detach() - c).abs().max() < 0.15
    assert loss.mean().item() < 1.3  # started at 1 + mean(c²) = 2.75


def test_time_sampling_distributions_and_determinism():
    uniform = Transport(time_sampling="uniform").sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    logit = Transport(time_sampling="lognormal")  # the reference's name for logit-normal
    t = logit.sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert abs(t.median() - 0.5) < 0.02 and ((t > 0.25) & (t < 0.75)).float().mean() > 0.6
    again = logit.sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    shifted = Transport(logit_mean=1.0).sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert abs(shifted.median() - 1 / (1 + math.exp(-1))) < 0.02
    with pytest.raises(ValueError, match="time_sampling"):
        Transport(time_sampling="beta")


def test_validation_losses_are_deterministic_with_a_generator():
    transport = Transport(use_cosine_loss=True)
    x1 = torch.randn(3, 2, 4, 4)

    def fn(x_t, t):
        return 0.5 * x_t + t.view(-1, 1, 1, 1)

    a = transport.training_losses(fn, x1, generator=torch.Generator().manual_seed(7))["loss"]
    b = transport.training_losses(fn, x1, generator=torch.Generator().manual_seed(7))["loss"]
    c = transport.training_losses(fn, x1, generator=torch.Generator().manual_seed(8))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_timestep_shift_formula():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for s in (0.3, 1.0, 3.0):
        torch.testing.assert_close(shift_timesteps(t, s), s * t / (1 + (s - 1) * t))
    grid = sampling_grid(4, timestep_shift=3.0)
    assert grid.shape == (5,) and grid[0] == 0 and grid[-1] == 1
    torch.testing.assert_close(grid[2], torch.tensor(0.75, dtype=torch.float64))  # 3·0.5 / (1 + 2·0.5)
    assert (shift_timesteps(t, 0.3)[1:-1] < t[1:-1]).all()  # s < 1: more steps near the noise end
    torch.testing.assert_close(sampling_grid(4), torch.linspace(0, 1, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="shift"):
        shift_timesteps(t, 0.0)


def test_heun_is_more_accurate_than_euler_on_a_known_ode():
    """dx/dt = cos(t)·x from x(0) = x0 has x(1) = x0·e^{sin 1}; Euler is first order, Heun second."""
    x0 = torch.randn(8, dtype=torch.float64)
    exact = x0 * math.exp(math.sin(1.0))

    def fn(x, t):
        return torch.cos(t.to(x.dtype)).view(-1) * x

    def error(method, steps, shift=1.0):
        return (sample_ode(fn, x0, num_steps=steps, method=method, timestep_shift=shift) - exact).abs().max().item()

    assert error("heun", 10) < 0.2 * error("euler", 10)  # measured: 0.009 vs 0.069
    assert 1.7 < error("euler", 20) / error("euler", 40) < 2.3  # halving the step halves Euler's error
    assert 3.5 < error("heun", 20) / error("heun", 40) < 4.5  # and quarters Heun's
    # a shifted grid integrates the same ODE (coarser steps near t = 1 for s < 1)
    assert error("heun", 50, shift=0.3) < 2e-3


def test_sampling_is_deterministic_for_a_seed():
    model = create_dit("tiny", input_size=4, in_channels=4, num_classes=3, num_conditions=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    model.eval()  # no label dropout while sampling
    fn = model.velocity_fn(torch.tensor([0, 2]), torch.tensor([1, 0]))
    for method in ("euler", "heun"):
        runs = [sample_ode(fn, make_noise((2, 4, 4, 4), seed=seed), num_steps=4, method=method, timestep_shift=0.3,
                           cfg_scale=4.0, cfg_interval_start=0.125) for seed in (11, 11, 12)]
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
        assert torch.isfinite(runs[0]).all()
    trajectory = sample_ode(fn, make_noise((2, 4, 4, 4), seed=11), num_steps=4, return_trajectory=True)
    assert len(trajectory) == 5


def test_sampler_guidance_interval_and_channels():
    calls = {"plain": [], "pair": []}

    def fn(x, t, with_uncond=False):
        if with_uncond:
            calls["pair"].append(float(t[0]))
            return torch.ones_like(x), torch.zeros_like(x)  # v_cond = 1, v_uncond = 0 on every channel
        calls["plain"].append(float(t[0]))
        return torch.ones_like(x)

    x = sample_ode(fn, torch.zeros(1, 5, 2, 2), num_steps=4, cfg_scale=3.0, cfg_interval_start=0.5)
    assert calls["plain"] == [0.0, 0.25] and calls["pair"] == [0.5, 0.75]  # no unconditional pass before 0.5
    torch.testing.assert_close(x, torch.full((1, 5, 2, 2), 0.5 * 1 + 0.5 * 3.0))  # all channels guided
    v = apply_cfg(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.1, 0.9]), 2.0, cfg_interval_start=0.5)
    torch.testing.assert_close(v, torch.tensor([[1.0] * 3, [2.0] * 3]))
    with pytest.raises(ValueError, match="method"):
        sample_ode(fn, torch.zeros(1, 5, 2, 2), method="rk4")


def test_training_objective_weights_the_cosine_term_from_the_config():
    from microdoppler_finetune.dit.objective import make_transport, velocity_loss_terms

    x1, x0, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.full((2,), 0.5)

    def zero_velocity(x_t, tt):  # cosine term 1 everywhere
        return torch.zeros_like(x_t)

    off = velocity_loss_terms(zero_velocity, x1, x0, t, make_transport(0.0))
    torch.testing.assert_close(off["loss"], off["mse"])
    assert off["cosine"].abs().max() == 0
    half = velocity_loss_terms(zero_velocity, x1, x0, t, make_transport(0.5))
    torch.testing.assert_close(half["loss"], half["mse"] + 0.5)
    with pytest.raises(ValueError, match="cosine_loss_weight"):
        make_transport(-1.0)
