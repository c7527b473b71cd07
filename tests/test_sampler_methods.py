"""The few-step ODE samplers (models.transport.sample_ode): evaluation counts, orders of accuracy on a flow whose
exact solution is known, the release's conventions (grid, guidance interval), and the sampler settings."""
from __future__ import annotations

import math

import pytest
import torch

from microdoppler_finetune.dit.sampling import SAMPLERS, SamplerSettings
from models.transport import (
    EVALUATIONS_PER_STEP,
    SAMPLING_METHODS,
    _adams_weights,
    canonical_method,
    model_evaluations,
    sample_ode,
    steps_for_evaluations,
)

MU, S = 1.5, 0.5  # data ~ N(MU, S²): the flow-matching velocity and the ODE's end point are known in closed form


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact velocity E[x1 − x0 | x_t] of the linear path for data N(MU, S²) and noise N(0, 1)."""
    t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    variance = t * t * S * S + (1 - t) ** 2
    return (t * S * S - (1 - t)) * (x - t * MU) / variance + MU


def error(method: str, steps: int, shift: float = 1.0) -> float:
    z = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample_ode(gaussian_velocity, z, num_steps=steps, method=method, timestep_shift=shift)
    return (out - (MU + S * z)).abs().max().item()  # the ODE maps noise z to MU + S·z


def test_every_method_spends_the_evaluations_it_declares():
    for method in SAMPLING_METHODS:
        calls = []

        def fn(x, t):
            calls.append(float(t[0]))
            return torch.ones_like(x)

        out = sample_ode(fn, torch.zeros(2, 3), num_steps=5, method=method, timestep_shift=0.3)
        assert len(calls) == model_evaluations(method, 5) == 5 * EVALUATIONS_PER_STEP[method], method
        # only Heun's corrector evaluates at the end point t = 1
        assert all(0.0 <= t < 1.0 or (method == "heun" and t == 1.0) for t in calls), (method, calls)
        torch.testing.assert_close(out, torch.ones(2, 3))  # a constant velocity is integrated exactly
        assert steps_for_evaluations(method, 10) == 10 // EVALUATIONS_PER_STEP[method]


def test_orders_of_accuracy_on_a_known_flow():
    assert 1.8 < error("euler", 16) / error("euler", 32) < 2.2  # first order
    for method in ("heun", "ab2"):
        assert error(method, 16) / error(method, 32) > 3.4, method  # second order (measured 3.6, 4.4)
    assert error("midpoint", 16) / error("midpoint", 32) > 7  # third on this linear flow (measured 8.0)
    assert error("ab3", 32) / error("ab3", 64) > 7  # third order (measured 9.1)
    # The log-SNR solvers have first-order first and last steps (λ = ±∞ at t = 0 and 1); at equal evaluations
    # they are still well ahead of Euler (measured at 32 steps: dpm++2m 0.15x, unipc 0.08x Euler's error).
    for method in ("dpm++2m", "unipc"):
        assert error(method, 32) < 0.25 * error("euler", 32), method
    assert error("unipc", 64) < error("dpm++2m", 64)  # the corrector helps


def test_log_snr_solvers_reduce_to_euler_with_first_order_steps():
    """From t = 0 and into t = 1 the DPM-Solver++ / UniPC steps are first order, which on the linear path is the
    Euler step: with two steps both samplers give Euler's result."""
    noise = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))

    def fn(x, t):
        return torch.sin(3 * x) + t.view(-1, 1, 1, 1)

    euler = sample_ode(fn, noise, num_steps=2, method="euler", timestep_shift=0.3)
    for method in ("dpm++2m", "unipc", "ab2", "ab3"):
        torch.testing.assert_close(sample_ode(fn, noise, num_steps=2, method=method, timestep_shift=0.3) if
                                   method.startswith(("dpm", "uni")) else
                                   sample_ode(fn, noise, num_steps=1, method=method, timestep_shift=0.3),
                                   euler if method.startswith(("dpm", "uni")) else
                                   sample_ode(fn, noise, num_steps=1, method="euler", timestep_shift=0.3),
                                   rtol=1e-6, atol=1e-6)


def test_adams_weights_integrate_polynomials_exactly():
    nodes, a, b = [0.1, 0.25, 0.4], 0.4, 0.7
    weights = _adams_weights(nodes, a, b)
    for power in range(3):  # exact for every polynomial of degree < number of nodes
        assert sum(w * t**power for w, t in zip(weights, nodes)) == pytest.approx((b ** (power + 1) - a ** (power + 1))
                                                                                 / (power + 1), rel=1e-12)
    h, hp = 0.3, 0.15  # the classic variable-step AB2 weights
    assert _adams_weights([0.25, 0.4], 0.4, 0.7) == pytest.approx([-h * h / (2 * hp), h * (1 + h / (2 * hp))])


def test_guidance_interval_and_determinism_for_every_method():
    for method in SAMPLING_METHODS:
        pairs = []

        def fn(x, t, with_uncond=False):
            if with_uncond:
                pairs.append(float(t[0]))
                return torch.cos(x), torch.zeros_like(x)
            assert float(t[0]) < 0.5  # unguided evaluations only before the interval starts
            return torch.cos(x)

        noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
        runs = [sample_ode(fn, noise.clone(), num_steps=6, method=method, cfg_scale=3.0, cfg_interval_start=0.5)
                for _ in range(2)]
        assert torch.equal(runs[0], runs[1]) and torch.isfinite(runs[0]).all()
        assert pairs and min(pairs) >= 0.5, method


def test_sampler_settings_accept_the_new_methods_and_count_evaluations():
    assert set(SAMPLERS) == set(SAMPLING_METHODS)
    assert SamplerSettings(sampler="DPM++2M").sampler == "dpm++2m"
    assert SamplerSettings(sampler="adams2").sampler == "ab2"
    settings = SamplerSettings(num_sampling_steps=26, sampler="heun")
    assert settings.ode_steps == 25 and settings.model_evaluations == 50
    assert SamplerSettings(num_sampling_steps=250).model_evaluations == 249  # the release's Euler
    with pytest.raises(ValueError, match="Unknown sampler"):
        SamplerSettings(sampler="rk45")
    with pytest.raises(ValueError, match="method"):
        canonical_method("rk4")
    assert math.isclose(model_evaluations("unipc", 12), 12)
