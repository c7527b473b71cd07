"""Exponential moving average of the DiT weights (what validation, sample grids, the export and sampling use).

The averaging is diffusers' ``EMAModel`` (``diffusers.training_utils``); this module only connects it to the
trainer:

* decay: ``dit.train.ema_decay``, with diffusers' default warm-up min(decay, (1 + n) / (10 + n)) over the first
  updates (the first update copies the weights), so early samples are not dominated by the random init;
* weights that do not train (frozen backbone) are copied, trainable ones averaged (EMAModel.step);
* the averaged weights are used by swapping them into the live model for a moment (EMAModel.store / copy_to /
  restore): no second model in memory, the same footprint as one extra copy of the parameters;
* checkpoints: ``ema`` holds the averaged weights as a state_dict under the model's own names (the released
  LightningDiT layout, readable by ``models.dit.load_dit``) and ``ema_state`` EMAModel's counters and settings
  (plain types), so a resumed run continues the average exactly.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

import torch

# EMAModel.state_dict() minus the tensors: plain numbers, stored as the checkpoint's "ema_state".
EMA_SETTING_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                    "power")


class DiTEMA:
    """diffusers' EMAModel over the parameters of ``model`` (the unwrapped module the optimizer trains)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        from diffusers.training_utils import EMAModel  # imported here: it pulls in transformers (seconds)

        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay (dit.train.ema_decay) must be in [0, 1), got {decay}.")
        self.names = [name for name, _ in model.named_parameters()]
        # use_ema_warmup=False: the (1 + n) / (10 + n) warm-up capped by decay; foreach: one fused update per step.
        self.averager = EMAModel(model.parameters(), decay=float(decay), use_ema_warmup=False, foreach=True)

    @property
    def num_updates(self) -> int:
        return int(self.averager.optimization_step)

    @property
    def decay(self) -> float:
        return float(self.averager.decay)

    @torch.no_grad()
    def step(self, model: torch.nn.Module) -> None:
        """One update after an optimizer step (trainable weights averaged, frozen ones copied)."""
        self.averager.step(self._parameters(model))

    def _parameters(self, model: torch.nn.Module) -> list:
        named = list(model.named_parameters())
        if [name for name, _ in named] != self.names:
            raise ValueError("The EMA was built for another parameter list (LoRA adapters or the architecture "
                             "changed after it was created).")
        return [param for _, param in named]

    # ------------------------------------------------------------------------------------- using the average

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``model`` with the averaged weights for the duration of the block, then its own weights back (exactly).

        The caller chooses the mode (validation and sampling use eval mode); the mode is restored on exit.
        """
        params = self._parameters(model)
        was_training = model.training
        self.averager.store(params)
        try:
            self.averager.copy_to(params)
            yield model
        finally:
            self.averager.restore(params)
            model.train(was_training)

    def weights(self, model: torch.nn.Module) -> dict:
        """The averaged state_dict under ``model``'s key names (buffers: the model's own, they never train)."""
        shadow = dict(zip(self.names, self.averager.shadow_params))
        return {key: shadow.get(key, value) for key, value in model.state_dict().items()}

    # ------------------------------------------------------------------------------------- checkpoints

    def settings(self) -> dict:
        """EMAModel's counters and settings as plain types (the checkpoint's ``ema_state``)."""
        state = self.averager.state_dict()
        return {key: state[key] for key in EMA_SETTING_KEYS}

    def load(self, weights: Mapping[str, torch.Tensor], settings: Optional[Mapping] = None, *,
             legacy_updates: Optional[int] = None) -> None:
        """Restore from a checkpoint's ``ema`` (state_dict) and ``ema_state``.

        The decay stays this run's (``dit.train.ema_decay``, as before EMAModel); a checkpoint written with
        another decay is named. ``legacy_updates``: the update count of a checkpoint written before EMAModel was
        used (its "ema_updates").
        """
        missing = [name for name in self.names if name not in weights]
        if missing:
            raise KeyError(f"The checkpoint's EMA weights lack {len(missing)} parameters of this model, e.g. "
                           f"{missing[:3]}.")
        device_of = dict(zip(self.names, self.averager.shadow_params))
        state = {key: value for key, value in (settings or {}).items() if key in EMA_SETTING_KEYS}
        saved_decay = state.pop("decay", None)
        if saved_decay is not None and float(saved_decay) != self.decay:
            print(f"NOTE: the checkpoint's EMA used decay {saved_decay}; continuing with dit.train.ema_decay = "
                  f"{self.decay}.", flush=True)
        if settings is None and legacy_updates is not None:
            state["optimization_step"] = int(legacy_updates)
        state["shadow_params"] = [weights[name].to(device=device_of[name].device, dtype=device_of[name].dtype)
                                  for name in self.names]
        self.averager.load_state_dict(state)
