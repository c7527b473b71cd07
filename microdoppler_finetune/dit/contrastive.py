"""Supervised-contrastive auxiliary loss on pooled DiT features (pulls samples of one person together).

The guide fine-tunes with ``contrastive_weight`` 0.3: the DiT's final hidden tokens, mean-pooled per sample,
should be closer for two latents of the same person than for latents of different people. The features are
read with a forward hook on the last transformer block, so the DiT itself needs no special path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    """SupCon loss (Khosla et al. 2020) of features [B, D] with integer labels [B].

    For every anchor with at least one other sample of its label: minus the mean log-probability, under a
    softmax over all other samples of the batch, of picking a same-label sample. Anchors without a positive
    are left out; a batch without any positive pair gives 0 (still attached to the graph).
    """
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be [B, D] and labels [B]; got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}.")
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature  # [B, B] cosine similarities / T
    batch = labels.shape[0]
    not_self = ~torch.eye(batch, dtype=torch.bool, device=features.device)
    positive = (labels[:, None] == labels[None, :]) & not_self
    # The softmax denominator runs over every other sample (self excluded).
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    positives_per_anchor = positive.sum(dim=1)
    has_positive = positives_per_anchor > 0
    if not bool(has_positive.any()):
        return features.sum() * 0.0
    mean_log_prob_pos = (log_prob * positive).sum(dim=1)[has_positive] / positives_per_anchor[has_positive]
    return -mean_log_prob_pos.mean()


def find_transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The DiT's ``blocks`` ModuleList (also inside a peft or DDP wrapper)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] == "blocks":
            found = module
    if found is None or len(found) == 0:
        raise AttributeError(f"{type(model).__name__} has no 'blocks' ModuleList of transformer blocks.")
    return found


class PooledFeatureTap:
    """Forward hook on the last transformer block: keeps its output tokens [B, N, D] mean-pooled to [B, D].

    Enabled only while the contrastive loss is on (the hook costs nothing otherwise). Under CFG-style doubled
    batches the caller pools what it fed in; the trainer never doubles batches.
    """

    def __init__(self, model: torch.nn.Module):
        self.block = find_transformer_blocks(model)[-1]
        self.pooled: Optional[torch.Tensor] = None
        self._handle = self.block.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        tokens = output[0] if isinstance(output, (tuple, list)) else output  # [B, N, D]
        self.pooled = tokens.mean(dim=1)  # [B, D]

    def take(self) -> torch.Tensor:
        if self.pooled is None:
            raise RuntimeError("No features captured: the last transformer block did not run.")
        pooled, self.pooled = self.pooled, None
        return pooled

    def remove(self) -> None:
        self._handle.remove()
