"""Why a DiT training step was not finite, and what the user should change (the trainer's stop message)."""
from __future__ import annotations

from typing import Iterable

import torch

CAUSES = ("data", "weights", "fp16", "loss")


def nonfinite_cause(x1: torch.Tensor, params: Iterable[torch.Tensor], precision: str) -> str:
    """As far as one can tell: the batch (data), the weights (a learning rate too high made them diverge), or the
    loss of finite inputs (fp16 overflow, or again the learning rate)."""
    if not bool(torch.isfinite(x1).all()):
        return "data"
    if any(not bool(torch.isfinite(p).all()) for p in params):
        return "weights"
    return "fp16" if precision == "fp16" else "loss"


def nonfinite_advice(causes: list, learning_rate: float) -> str:
    """One sentence per cause seen (in a fixed order), each naming the flag that fixes it."""
    lr = float(learning_rate)
    advice = {
        "data": "the training latents of these batches hold NaN/Inf values (data): rebuild the latent cache "
                "(step5_validate_export.py --cache) and check the images and the exported encoder",
        "weights": f"the weights became non-finite: the learning rate is too high (lower --lr, now {lr:g}, or "
                   f"add --set dit.train.warmup_steps=N)",
        "fp16": "fp16 overflow: train with --precision bf16 (or fp32), or lower the learning rate",
        "loss": f"the loss overflowed with finite inputs and weights: lower the learning rate (--lr, now "
                f"{lr:g}) or train in fp32",
    }
    seen = [c for c in CAUSES if c in causes]
    return "Likely cause: " + "; ".join(advice[c] for c in seen or ["loss"]) + "."
