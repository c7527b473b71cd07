"""Flow matching on the linear path and ODE sampling (the transport of LightningDiT / SiT, velocity prediction).

Convention (DESIGN.md section 3): x_t = t·x1 + (1 − t)·x0 with noise x0 at t = 0 and data x1 at t = 1; the
model predicts the velocity dx_t/dt = x1 − x0. Training draws t uniformly or logit-normally (the reference's
"lognormal": t = sigmoid(n), n ~ N(mean, std²)) and regresses the velocity with a per-sample MSE, plus an
optional cosine term. Sampling integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 with Euler or Heun steps
on a grid warped by the timestep shift t' = s·t / (1 + (s − 1)·t), optionally with classifier-free guidance
inside an interval. The release's conventions hold: ``num_sampling_steps`` counts GRID POINTS (250 = 249 Euler
steps), a shift <= 0 means no shift, a guidance scale <= 1 no guidance.

Nothing here knows the model class: training takes ``model_fn(x_t, t, **kwargs) -> v`` and sampling takes
``velocity_fn(x, t) -> v`` (and, for guidance, ``velocity_fn(x, t, with_uncond=True) -> (v_cond, v_uncond)``;
``LightningDiT.velocity_fn`` builds one).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

TIME_SAMPLINGS = ("uniform", "logit_normal")
SAMPLING_METHODS = ("euler", "heun")


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t: B -> B x 1 x ... x 1 broadcastable against x."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point of the linear path at time t (B): t·x1 + (1 − t)·x0."""
    t = expand_t(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """d/dt of the linear path: x1 − x0 (independent of t)."""
    return x1 - x0


def _random_device(generator: Optional[torch.Generator], fallback) -> torch.device:
    # Draw on the generator's device (a CPU generator gives the same numbers on every machine), then move.
    return generator.device if generator is not None else torch.device(fallback)


def make_noise(shape: Sequence[int], *, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
               device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise, reproducible from a seed or a generator (drawn on CPU for a seed: same on all GPUs)."""
    if seed is not None and generator is not None:
        raise ValueError("Pass either seed or generator, not both.")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(shape), generator=generator, device=_random_device(generator, device),
                        dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


class Transport:
    """Training side of the linear-path flow matching: time sampling, path points, velocity loss."""

    def __init__(self, time_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 use_cosine_loss: bool = False, cosine_weight: float = 1.0):
        time_sampling = "logit_normal" if time_sampling in ("lognormal", "lognorm") else time_sampling
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS} (or 'lognormal'), got '{time_sampling}'")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.time_sampling = time_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.use_cosine_loss = bool(use_cosine_loss)
        self.cosine_weight = float(cosine_weight)

    def sample_t(self, batch: int, *, device="cpu", generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """B training times in (0, 1): uniform, or sigmoid(N(mean, std²)) which favours the middle of the path."""
        where = _random_device(generator, device)
        if self.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=where)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator, device=where))
        return t.to(device)

    def training_losses(self, model_fn: Callable[..., torch.Tensor], x1: torch.Tensor, *,
                        t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                        generator: Optional[torch.Generator] = None, **model_kwargs) -> dict[str, torch.Tensor]:
        """Per-sample losses for data x1 (B x C x H x W).

        t and noise are drawn (from ``generator`` if given: fixed seeds make validation deterministic) unless
        passed. Returns 'loss' (B: mse + cosine_weight·cosine), 'mse' (B), 'cosine' (B, zeros when off), 't',
        'pred'. ``model_fn(x_t, t, **model_kwargs)`` must return B x C x H x W velocities.
        """
        batch = x1.shape[0]
        if t is None:
            t = self.sample_t(batch, device=x1.device, generator=generator)
        t = t.to(device=x1.device, dtype=torch.float32)
        if noise is None:
            noise = make_noise(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if noise.shape != x1.shape or t.shape != (batch,):
            raise ValueError(f"noise must have x1's shape {tuple(x1.shape)} and t shape ({batch},); got "
                             f"{tuple(noise.shape)} and {tuple(t.shape)}")
        x_t = interpolate(noise, x1, t)  # B x C x H x W
        target = velocity_target(noise, x1)
        pred = model_fn(x_t, t, **model_kwargs)
        if pred.shape != target.shape:
            raise ValueError(f"model output {tuple(pred.shape)} does not match the data shape {tuple(target.shape)}")
        dims = tuple(range(1, x1.dim()))
        mse = (pred.float() - target.float()).pow(2).mean(dim=dims)  # B
        if self.use_cosine_loss:
            # 1 − cosine between predicted and true velocity across channels, averaged over positions.
            cosine = (1 - F.cosine_similarity(pred.float(), target.float(), dim=1)).flatten(1).mean(1)  # B
        else:
            cosine = torch.zeros_like(mse)
        return {"loss": mse + self.cosine_weight * cosine, "mse": mse, "cosine": cosine, "t": t, "pred": pred}


# ----------------------------------------------------------------------------------------------- sampling


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s·t / (1 + (s − 1)·t): keeps 0 and 1 fixed; s < 1 puts more steps near t = 0 (noise), s > 1 near 1.

    The formula itself needs s > 0; the samplers read s <= 0 as "no shift" (as the release does) and never call
    this then.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0 (1 = no shift), got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def uses_shift(timestep_shift: float) -> bool:
    """The release's rule: a shift <= 0 means no shift (and 1 is the identity)."""
    return timestep_shift > 0 and timestep_shift != 1.0


def uses_guidance(cfg_scale: float) -> bool:
    """The release's rule: guidance only for cfg_scale > 1 (<= 1: the plain conditional velocity)."""
    return cfg_scale > 1.0


def steps_of_grid(num_sampling_steps: int) -> int:
    """Integration steps of a grid of ``num_sampling_steps`` points (the release's count): 250 points, 249 steps."""
    if int(num_sampling_steps) < 2:
        raise ValueError(f"num_sampling_steps counts grid points (the release's meaning: 250 points = 249 Euler "
                         f"steps) and must be >= 2, got {num_sampling_steps}")
    return int(num_sampling_steps) - 1


def sampling_grid(num_steps: int = 249, timestep_shift: float = 1.0, t_start: float = 0.0,
                  t_end: float = 1.0) -> torch.Tensor:
    """num_steps + 1 times from t_start to t_end (float64), uniform then shifted (no shift for a shift <= 0).

    The release's ``num_sampling_steps`` counts these grid points: its 250 is ``num_steps`` = 249 here
    (:func:`steps_of_grid`).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    grid = torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float64)
    return shift_timesteps(grid, timestep_shift) if uses_shift(timestep_shift) else grid


def apply_cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, t: torch.Tensor, cfg_scale: float,
              cfg_interval_start: float = 0.0) -> torch.Tensor:
    """v_u + s·(v_c − v_u) on every channel for samples with t >= cfg_interval_start, v_c for the others.

    t: B. The interval keeps guidance away from the noisiest part of the path (t near 0), where a large scale
    mostly adds artefacts.
    """
    guided = v_uncond + cfg_scale * (v_cond - v_uncond)
    inside = expand_t(t.reshape(-1).to(v_cond.device) >= cfg_interval_start, v_cond).bool()
    return torch.where(inside, guided, v_cond)


def _velocity(velocity_fn: Callable, x: torch.Tensor, t_value: float, cfg_scale: float,
              cfg_interval_start: float) -> torch.Tensor:
    t = torch.full((x.shape[0],), float(t_value), device=x.device, dtype=torch.float32)
    if not uses_guidance(cfg_scale) or t_value < cfg_interval_start:
        return velocity_fn(x, t)  # no unconditional pass without guidance or outside its interval
    v_cond, v_uncond = velocity_fn(x, t, with_uncond=True)
    return apply_cfg(v_cond, v_uncond, t, cfg_scale, cfg_interval_start)


@torch.no_grad()
def sample_ode(velocity_fn: Callable, noise: torch.Tensor, *, num_steps: Optional[int] = None,
               num_sampling_steps: Optional[int] = None, method: str = "euler", timestep_shift: float = 1.0,
               cfg_scale: float = 1.0, cfg_interval_start: float = 0.0, return_trajectory: bool = False,
               progress: bool = False) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Integrate dx/dt = v(x, t) from the noise at t = 0 to t = 1 (data).

    How many steps: either ``num_sampling_steps`` = grid points, the release's option (250 points = 249 steps;
    the default when neither is given), or ``num_steps`` = integration steps (grid points - 1).
    velocity_fn(x, t) -> v, with t a B tensor; when cfg_scale > 1 it is also called as
    velocity_fn(x, t, with_uncond=True) -> (v_cond, v_uncond) inside the guidance interval (t >=
    cfg_interval_start). As in the release, cfg_scale <= 1 means no guidance and timestep_shift <= 0 no shift.
    Euler: one evaluation per step; Heun: two (predictor, then trapezoidal corrector).
    Deterministic for a given noise (make_noise(seed=...)) and a deterministic velocity_fn (a model in eval mode:
    no label dropout). Returns the final x, or all num_steps + 1 states when return_trajectory.
    """
    method = method.lower()
    if method not in SAMPLING_METHODS:
        raise ValueError(f"method must be one of {SAMPLING_METHODS}, got '{method}'")
    if num_steps is not None and num_sampling_steps is not None:
        raise ValueError("Pass num_sampling_steps (grid points, the release's count) or num_steps (integration "
                         "steps = grid points - 1), not both.")
    if num_steps is None:
        num_steps = steps_of_grid(250 if num_sampling_steps is None else num_sampling_steps)
    grid = sampling_grid(num_steps, timestep_shift).tolist()
    steps = range(num_steps)
    if progress:
        from microdoppler_finetune.utils.progress import progress as progress_bar

        steps = progress_bar(steps, desc=f"{method} sampling", unit="step", leave=False)
    x = noise
    trajectory = [x] if return_trajectory else None
    for i in steps:
        t_now, t_next = grid[i], grid[i + 1]
        dt = t_next - t_now
        v_now = _velocity(velocity_fn, x, t_now, cfg_scale, cfg_interval_start)  # B x C x H x W
        if method == "euler":
            x = x + dt * v_now
        else:
            x_pred = x + dt * v_now
            v_next = _velocity(velocity_fn, x_pred, t_next, cfg_scale, cfg_interval_start)
            x = x + 0.5 * dt * (v_now + v_next)
        if trajectory is not None:
            trajectory.append(x)
    return trajectory if trajectory is not None else x


__all__ = [
    "Transport", "interpolate", "velocity_target", "make_noise", "shift_timesteps", "sampling_grid",
    "apply_cfg", "sample_ode", "steps_of_grid", "uses_shift", "uses_guidance", "TIME_SAMPLINGS", "SAMPLING_METHODS",
]
