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

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

TIME_SAMPLINGS = ("uniform", "logit_normal")


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


# Evaluations of the (guided) velocity per integration step. "dpm++2m" and "unipc" are multistep: one evaluation
# per step, earlier evaluations reused.
EVALUATIONS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "ab2": 1, "ab3": 1, "dpm++2m": 1, "unipc": 1}
SAMPLING_METHODS = tuple(EVALUATIONS_PER_STEP)
METHOD_ALIASES = {"dpmpp_2m": "dpm++2m", "dpm_solver++": "dpm++2m", "dpmpp2m": "dpm++2m", "dpm2m": "dpm++2m",
                  "unipc_bh2": "unipc", "rk2": "midpoint", "adams2": "ab2", "adams3": "ab3"}


def canonical_method(method: str) -> str:
    """The sampler's name in SAMPLING_METHODS (case-insensitive; a few common spellings accepted)."""
    name = str(method).strip().lower()
    name = METHOD_ALIASES.get(name, name)
    if name not in SAMPLING_METHODS:
        raise ValueError(f"method must be one of {SAMPLING_METHODS}, got '{method}'")
    return name


def model_evaluations(method: str, num_steps: int) -> int:
    """Velocity evaluations (model calls; a guided one runs the conditional and unconditional rows together) of
    ``num_steps`` integration steps."""
    return EVALUATIONS_PER_STEP[canonical_method(method)] * int(num_steps)


def steps_for_evaluations(method: str, evaluations: int) -> int:
    """Integration steps that spend at most ``evaluations`` model evaluations (at least one step)."""
    return max(1, int(evaluations) // EVALUATIONS_PER_STEP[canonical_method(method)])


def _adams_weights(nodes: Sequence[float], t_from: float, t_to: float) -> list[float]:
    """∫_{t_from}^{t_to} L_j(τ) dτ for the Lagrange basis polynomials L_j through ``nodes`` (variable-step
    Adams–Bashforth: x_to = x_from + Σ_j w_j·v(t_j))."""
    weights = []
    for j, node in enumerate(nodes):
        others = [o for k, o in enumerate(nodes) if k != j]
        coefficients = [1.0]  # ascending powers of τ: Π (τ − o) / (node − o)
        for other in others:
            shifted = [0.0] + coefficients
            for k, c in enumerate(coefficients):
                shifted[k] -= other * c
            coefficients = [c / (node - other) for c in shifted]
        weights.append(sum(c * (t_to ** (k + 1) - t_from ** (k + 1)) / (k + 1) for k, c in enumerate(coefficients)))
    return weights


def _data_prediction(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """x1 estimated from a point of the path and its velocity: x_t = x1 - (1 - t)·v on the linear path."""
    return x + (1.0 - t) * v


def _exp_neg_h(t_from: float, t_to: float) -> float:
    """exp(-(λ(t_to) − λ(t_from))) with the log-SNR λ(t) = log(t / (1 − t)) of the linear path (α = t, σ = 1 − t);
    exactly 0 when t_from = 0 (λ = −∞) or t_to = 1 (λ = +∞)."""
    if t_from <= 0.0 or t_to >= 1.0:
        return 0.0
    return (t_from * (1.0 - t_to)) / (t_to * (1.0 - t_from))


def _log_snr(t: float) -> float:
    return math.log(t) - math.log1p(-t)


def _interior(t: float) -> bool:
    return 0.0 < t < 1.0


def _first_order_update(x: torch.Tensor, d: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
    """DDIM / DPM-Solver++(1) in data prediction: x_to = (σ_to/σ_from)·x + α_to·(1 − e^{−h})·d; on the linear path
    this is the Euler step with velocity (d − x)/(1 − t_from)."""
    return ((1.0 - t_to) / (1.0 - t_from)) * x + (t_to * (1.0 - _exp_neg_h(t_from, t_to))) * d


def _unipc_b(h: float, order: int) -> list[float]:
    """The b vector of UniPC's B(h) = e^{-h} − 1 variant ("bh2") for data prediction (Zhao et al. 2023, eq. 8)."""
    hh = -h
    b_h = math.expm1(hh)
    h_phi_k = b_h / hh - 1.0
    factorial = 1
    out = []
    for i in range(1, order + 1):
        out.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return out


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
    Every method walks the same grid (uniform, then shifted):

    * ``euler``: one evaluation per step (the release's sampler; its numbers are reproduced exactly).
    * ``heun``: two (predictor, then trapezoidal corrector); ``midpoint``: two (explicit RK2 midpoint).
    * ``ab2`` / ``ab3``: Adams–Bashforth of order 2 / 3 in t on the velocity (variable steps: the previous
      evaluations' velocities extrapolated by their Lagrange polynomial); one evaluation per step, the first
      steps of lower order.
    * ``dpm++2m``: DPM-Solver++(2M) (Lu et al. 2022) on the linear path: the data prediction x1 = x + (1 − t)·v,
      the log-SNR λ = log(t/(1 − t)) (α = t, σ = 1 − t), second order from the previous evaluation; one
      evaluation per step. Steps whose history is at t = 0 (λ = −∞) and the final step to t = 1 (λ = +∞) are
      first order (the first-order step is exactly the Euler step).
    * ``unipc``: UniPC (Zhao et al. 2023; B(h) = e^{−h} − 1, order 2): the DPM-Solver++(2M) predictor plus a
      corrector that reuses each new evaluation to refine the point it was taken at, so third-order accuracy at
      one evaluation per step; final step first order, as above.

    Deterministic for a given noise (make_noise(seed=...)) and a deterministic velocity_fn (a model in eval mode:
    no label dropout). Returns the final x, or all num_steps + 1 states when return_trajectory.
    """
    method = canonical_method(method)
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

    def velocity(x_now: torch.Tensor, t_value: float) -> torch.Tensor:
        return _velocity(velocity_fn, x_now, t_value, cfg_scale, cfg_interval_start)  # B x C x H x W

    x = noise
    trajectory = [x] if return_trajectory else None
    history: list[tuple[float, torch.Tensor]] = []  # multistep: (t, velocity or data prediction), newest last
    previous_x: Optional[torch.Tensor] = None  # unipc: the (corrected) point the last predictor started from
    previous_order = 0
    for i in steps:
        t_now, t_next = grid[i], grid[i + 1]
        dt = t_next - t_now
        v_now = velocity(x, t_now)
        if method == "euler":
            x = x + dt * v_now
        elif method == "heun":
            x_pred = x + dt * v_now
            v_next = velocity(x_pred, t_next)
            x = x + 0.5 * dt * (v_now + v_next)
        elif method == "midpoint":
            v_mid = velocity(x + 0.5 * dt * v_now, t_now + 0.5 * dt)
            x = x + dt * v_mid
        elif method in ("ab2", "ab3"):
            history = (history + [(t_now, v_now)])[-int(method[-1]):]
            weights = _adams_weights([t for t, _ in history], t_now, t_next)
            x = x + sum(w * v for w, (_, v) in zip(weights, history))
        else:
            d_now = _data_prediction(x, v_now, t_now)
            if method == "unipc" and previous_x is not None:
                x = _unipc_correct(previous_x, x, d_now, t_now, history, previous_order)
            history = (history + [(t_now, d_now)])[-3:]
            final = i == num_steps - 1
            order = 1 if final else _multistep_order(history)
            previous_x, previous_order = x, order
            x = _multistep_predict(x, t_now, t_next, history, order)
        if trajectory is not None:
            trajectory.append(x)
    return trajectory if trajectory is not None else x


def _multistep_order(history: list[tuple[float, torch.Tensor]]) -> int:
    """2 when the two newest evaluations lie strictly inside (0, 1) (finite log-SNR), else 1."""
    return 2 if len(history) >= 2 and _interior(history[-1][0]) and _interior(history[-2][0]) else 1


def _multistep_predict(x: torch.Tensor, t_now: float, t_next: float, history: list, order: int) -> torch.Tensor:
    """DPM-Solver++(2M) step from t_now (whose data prediction is history[-1]) to t_next (= UniPC's predictor)."""
    d_now = history[-1][1]
    if order == 1:
        return _first_order_update(x, d_now, t_now, t_next)
    t_prev, d_prev = history[-2]
    h = _log_snr(t_next) - _log_snr(t_now)
    r = (_log_snr(t_now) - _log_snr(t_prev)) / h
    d = d_now + (0.5 / r) * (d_now - d_prev)
    return _first_order_update(x, d, t_now, t_next)


def _unipc_correct(x_from: torch.Tensor, x_pred: torch.Tensor, d_new: torch.Tensor, t_new: float,
                   history: list, order: int) -> torch.Tensor:
    """UniC: refine the predicted point x_pred at t_new with its own evaluation d_new (no extra evaluation).

    ``x_from`` is the point at history[-1]'s time the predictor started from; ``order`` the predictor's order.
    """
    t_from, d_from = history[-1]
    if not _interior(t_from):  # from t = 0 the step is infinite in log-SNR: the order-1 corrector, in closed form
        base = _first_order_update(x_from, d_from, t_from, t_new)
        return base + (0.5 * t_new) * (d_new - d_from)  # −α·B(h)·½·(d_new − d_from) with B(h) = −1
    h = _log_snr(t_new) - _log_snr(t_from)
    alpha_b = t_new * math.expm1(-h)
    base = _first_order_update(x_from, d_from, t_from, t_new)
    if order == 1 or len(history) < 2 or not _interior(history[-2][0]):
        return base - alpha_b * 0.5 * (d_new - d_from)
    t_prev, d_prev = history[-2]
    r1 = (_log_snr(t_prev) - _log_snr(t_from)) / h
    b1, b2 = _unipc_b(h, 2)
    # rhos solve [[1, 1], [r1, 1]] · rho = [b1, b2]
    rho_prev = (b1 - b2) / (1.0 - r1)
    rho_new = b1 - rho_prev
    d1_prev = (d_prev - d_from) / r1
    return base - alpha_b * (rho_prev * d1_prev + rho_new * (d_new - d_from))


__all__ = [
    "Transport", "interpolate", "velocity_target", "make_noise", "shift_timesteps", "sampling_grid",
    "apply_cfg", "sample_ode", "steps_of_grid", "uses_shift", "uses_guidance", "TIME_SAMPLINGS", "SAMPLING_METHODS",
    "EVALUATIONS_PER_STEP", "canonical_method", "model_evaluations", "steps_for_evaluations",
]
