"""Which DiT parameters train: full training, frozen backbone, LoRA adapters (peft), gradual unfreezing.

Rules (DiTFinetuneConfig):

- nothing set: every parameter trains;
- ``freeze_backbone``, ``lora_rank > 0`` or an ``unfreeze_schedule``: the backbone is frozen; what trains is
  the ``always_trainable`` modules (by default the person and condition tables ``y_embedder`` and
  ``condition_embedder``), the LoRA adapters, and the last N transformer blocks the schedule names for the
  current step.

The schedule is data: ``[{step: 0, last_blocks: 0}, {step: 5000, last_blocks: 4}]`` means no block trains
before step 5000, the last four from then on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, List, Mapping, Optional, Sequence

import torch

LORA_MARKER = "lora_"


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    targets: tuple
    dropout: float

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, data: Optional[Mapping]) -> Optional["LoraSettings"]:
        if not data:
            return None
        return cls(int(data["rank"]), float(data["alpha"]), tuple(data["targets"]), float(data["dropout"]))


def lora_target_regex(targets: Sequence[str]) -> str:
    """A peft target regex limited to layers inside transformer blocks.

    A bare name like "proj" would also match the patch embedding's ``x_embedder.proj`` conv; LoRA belongs on
    the attention and MLP linears of the blocks only.
    """
    names = [re.escape(t.strip()) for t in targets if t.strip()]
    if not names:
        raise ValueError("lora_targets is empty: name at least one of qkv, proj, w12, w3.")
    return rf"(.*\.)?blocks\.\d+\.(.*\.)?({'|'.join(names)})"


def apply_lora(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Wrap ``model`` in a peft LoRA model (base weights frozen by peft); returns the wrapper."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=lora_target_regex(settings.targets), bias="none")
    wrapped = get_peft_model(model, config)
    adapted = [n for n, _ in wrapped.named_parameters() if LORA_MARKER in n]
    if not adapted:
        raise ValueError(f"LoRA targets {list(settings.targets)} match no layer of the DiT blocks. Valid names "
                         f"for LightningDiT: qkv, proj (attention), w12, w3 (SwiGLU MLP).")
    return wrapped


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """A plain DiT with the adapters merged into its weights (for sampling and export)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


@dataclass
class TrainableRule:
    """What trains at a given step (see the module docstring)."""

    freeze_backbone: bool
    always_trainable: tuple = ()
    schedule: List[tuple] = field(default_factory=list)  # sorted (step, last_blocks)

    @classmethod
    def from_config(cls, finetune) -> "TrainableRule":
        schedule = sorted((int(e["step"]), int(e["last_blocks"])) for e in (finetune.unfreeze_schedule or []))
        for step, blocks in schedule:
            if step < 0 or blocks < 0:
                raise ValueError(f"unfreeze_schedule entries need step >= 0 and last_blocks >= 0; got "
                                 f"step={step}, last_blocks={blocks}.")
        frozen = bool(finetune.freeze_backbone) or int(finetune.lora_rank) > 0 or bool(schedule)
        return cls(frozen, tuple(finetune.always_trainable or ()), schedule)

    def last_blocks_at(self, step: int) -> int:
        blocks = 0
        for start, count in self.schedule:
            if step >= start:
                blocks = count
        return blocks

    def change_points(self) -> List[int]:
        return [step for step, _ in self.schedule]


def _path_parts(name: str) -> List[str]:
    return name.split(".")


def _block_index(name: str) -> Optional[int]:
    parts = _path_parts(name)
    for i, part in enumerate(parts[:-1]):
        if part == "blocks" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def apply_trainable_rule(model: torch.nn.Module, rule: TrainableRule, step: int, num_blocks: int) -> dict:
    """Set requires_grad on every parameter for ``step``; returns a summary (counts, trainable groups)."""
    if not rule.freeze_backbone:
        model.requires_grad_(True)
        return summarize_trainable(model)
    last = rule.last_blocks_at(step)
    first_trainable_block = max(0, num_blocks - last)
    always = set(rule.always_trainable)
    for name, param in model.named_parameters():
        parts = _path_parts(name)
        block = _block_index(name)
        trainable = (
            any(LORA_MARKER in part for part in parts)
            or bool(always.intersection(parts))
            or (block is not None and block >= first_trainable_block and last > 0)
        )
        param.requires_grad_(trainable)
    summary = summarize_trainable(model)
    summary["trainable_last_blocks"] = min(last, num_blocks)
    return summary


def summarize_trainable(model: torch.nn.Module) -> dict:
    total = trainable = 0
    groups = {}
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            key = _group_name(name)
            groups[key] = groups.get(key, 0) + param.numel()
    return {"total_params": total, "trainable_params": trainable, "trainable_groups": groups}


def _group_name(name: str) -> str:
    parts = [p for p in _path_parts(name) if p not in ("base_model", "model", "default")]
    if "blocks" in parts:
        i = parts.index("blocks")
        tail = "lora" if any(LORA_MARKER in p for p in parts) else "weights"
        return f"blocks.{parts[i + 1]}.{tail}"
    return parts[0]


def trainable_names(model: torch.nn.Module) -> List[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def optimizer_parameters(model: torch.nn.Module, rule: TrainableRule, num_blocks: int) -> Iterable:
    """Every parameter that trains at some point of the run (AdamW skips those whose grad is None)."""
    if not rule.freeze_backbone:
        return [p for p in model.parameters()]
    steps = [0] + rule.change_points()
    wanted = set()
    for step in steps:
        apply_trainable_rule(model, rule, step, num_blocks)
        wanted.update(id(p) for p in model.parameters() if p.requires_grad)
    return [p for p in model.parameters() if id(p) in wanted]
