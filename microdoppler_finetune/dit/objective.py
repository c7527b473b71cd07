"""The flow-matching objective in one place (models.transport): training loss and the deterministic val loss.

Linear path (DESIGN.md section 3): x_t = t * x1 + (1 - t) * x0 with x0 ~ N(0, I) (noise at t = 0) and x1 the
normalised latent; the DiT predicts the velocity x1 - x0; the loss is the per-sample mean squared error plus,
optionally, the release's cosine term w * (1 - cos(predicted, true velocity)) per position. Both are averaged per
sample, then over the batch, so train and validation losses are normalised the same way.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from models.transport import Transport

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> velocity

TRANSPORT = Transport(time_sampling="logit_normal")  # t = sigmoid(N(0, 1)), as the release trains


def make_transport(cosine_loss_weight: float = 0.0) -> Transport:
    """The training objective: velocity MSE, plus ``cosine_loss_weight`` x the cosine term when it is > 0."""
    weight = float(cosine_loss_weight)
    if weight < 0:
        raise ValueError(f"dit.train.cosine_loss_weight must be >= 0, got {weight}")
    return Transport(time_sampling="logit_normal", use_cosine_loss=weight > 0, cosine_weight=weight)


def sample_timesteps(batch: int, device, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return TRANSPORT.sample_t(batch, device=device, generator=generator)


def velocity_loss_terms(model_fn: ModelFn, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                        transport: Transport = TRANSPORT) -> dict:
    """Per-sample terms [B] at (x_t, t): 'loss' (what is optimised), 'mse' and 'cosine' (zeros when off)."""
    terms = transport.training_losses(model_fn, x1, t=t, noise=x0)
    return {name: terms[name] for name in ("loss", "mse", "cosine")}


def velocity_loss_per_sample(model_fn: ModelFn, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                             transport: Transport = TRANSPORT) -> torch.Tensor:
    """Per-sample loss [B] of the predicted velocity at (x_t, t)."""
    return velocity_loss_terms(model_fn, x1, x0, t, transport)["loss"]


@torch.no_grad()
def deterministic_val_loss(model_fn: ModelFn, x1: torch.Tensor, noise_for: Callable[[int], torch.Tensor],
                           timesteps: Sequence[float], transport: Transport = TRANSPORT) -> torch.Tensor:
    """Per-sample loss [B] averaged over the fixed ``timesteps``, with fixed noise per timestep position."""
    total = torch.zeros(x1.shape[0], device=x1.device)
    for position, value in enumerate(timesteps):
        x0 = noise_for(position).to(x1)
        t = torch.full((x1.shape[0],), float(value), device=x1.device)
        total += velocity_loss_per_sample(model_fn, x1, x0, t, transport).float()
    return total / len(timesteps)
