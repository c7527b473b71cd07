"""Exponential moving average of the DiT weights (what sampling uses by default)."""
from __future__ import annotations

import copy

import torch


class EMA:
    """A frozen copy of a module whose floating-point parameters and buffers track the live ones.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates, so early samples from the EMA
    are not dominated by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.eval()  # the EMA model is only ever evaluated (no dropout, no label dropout)
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        live = dict(model.named_parameters())
        ema_params, new_params = [], []
        for name, param in self.module.named_parameters():
            source = live[name]
            if source.requires_grad:  # frozen weights never change: nothing to average
                ema_params.append(param)
                new_params.append(source.detach().to(param.dtype))
        if ema_params:
            torch._foreach_lerp_(ema_params, new_params, 1.0 - decay)
        live_buffers = dict(model.named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(live_buffers[name])
        self.num_updates += 1

    @torch.no_grad()
    def copy_frozen_from(self, model: torch.nn.Module) -> None:
        """Copy every parameter (used when training starts: EMA = the initial weights)."""
        self.module.load_state_dict(model.state_dict())

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, num_updates: int) -> None:
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
