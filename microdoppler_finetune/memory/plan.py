"""Batch size, gradient accumulation and gradient checkpointing that fit a GPU, from measured memory per image.

Estimate of one training process's peak GPU memory (bytes), fp32 as in the presets:

* trainable networks: 16 per parameter (fp32 weights, gradients, Adam's two moments); DDP adds 4 (its
  gradient buckets); the DiT's EMA copy adds 4;
* frozen networks on the GPU (LPIPS, the alignment foundation model): 4 per parameter;
* activations: the measured bytes per image (:mod:`.activations`) times the batch, plus 15 % for the backward
  pass's transient gradients of the activations;
* a fixed 0.75 GiB for the CUDA context, cuDNN workspaces and allocator slack.

The plan uses at most 92 % of the GPU. It keeps the preset's effective batch (batch x accumulation x GPUs):
the largest batch per GPU that fits, the rest as accumulation; gradient checkpointing (about 30 % more compute)
only when without it the batch per GPU would fall below 4 and with it the batch is larger. 16-mixed precision
saves activation memory on top: the estimate does not count on it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from microdoppler_finetune.memory.activations import ActivationMemory, vavae_step_memory

GIB = 1024 ** 3
RUNTIME_OVERHEAD = int(0.75 * GIB)
BACKWARD_FACTOR = 1.15
USABLE_FRACTION = 0.92
MIN_USEFUL_BATCH = 4

# The users' machines (total memory as torch reports it).
TARGETS = {"p100": ("one P100 16 GB", 15.89, 1), "t4x2": ("two T4 15 GB", 14.58, 2)}


@dataclass
class MemoryPlan:
    what: str  # "vavae" | "dit"
    gpu: str
    gpu_gib: float
    devices: int
    effective_batch: int
    batch_size: int  # per GPU; 0 when nothing fits
    gradient_accumulation: int
    gradient_checkpointing: bool
    estimate_gib: float
    fits: bool
    fixed_gib: float  # weights, gradients, optimizer states, frozen networks, runtime
    per_image_mib: float  # activations of one image (with checkpointing when the plan uses it)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if not self.fits:
            return (f"{self.what} on {self.gpu}: does not fit even at batch 1 with gradient checkpointing "
                    f"(needs ~{self.estimate_gib:.1f} GiB of {self.gpu_gib:.1f})")
        return (f"{self.what} on {self.gpu}: batch {self.batch_size} per GPU x accumulation "
                f"{self.gradient_accumulation}{' x ' + str(self.devices) + ' GPUs' if self.devices > 1 else ''} "
                f"= {self.batch_size * self.gradient_accumulation * self.devices} (preset's effective batch "
                f"{self.effective_batch}), gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}; "
                f"estimated peak {self.estimate_gib:.1f} of {self.gpu_gib:.1f} GiB "
                f"({self.fixed_gib:.1f} fixed + {self.per_image_mib:.0f} MiB per image)")


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate_bytes(fixed: int, activations: ActivationMemory, batch: int, checkpointing: bool) -> int:
    return int(fixed + BACKWARD_FACTOR * activations.for_batch(batch, checkpointing))


def choose(what: str, gpu: str, gpu_gib: float, devices: int, effective_batch: int, fixed: int,
           activations: ActivationMemory) -> MemoryPlan:
    """The plan for one GPU type (see the module docs for the rule)."""
    budget = USABLE_FRACTION * gpu_gib * GIB
    per_device = max(1, math.ceil(effective_batch / devices))

    def largest(checkpointing: bool) -> int:
        # divisors only: batch x accumulation is then exactly the preset's effective batch
        fitting = [b for b in range(1, per_device + 1)
                   if per_device % b == 0 and estimate_bytes(fixed, activations, b, checkpointing) <= budget]
        return max(fitting, default=0)

    plain, checkpointed = largest(False), largest(True)
    use_checkpointing = (plain < min(MIN_USEFUL_BATCH, per_device) and checkpointed > plain)
    batch = checkpointed if use_checkpointing else plain
    fits = batch > 0
    shown = max(batch, 1)
    return MemoryPlan(
        what=what, gpu=gpu, gpu_gib=round(gpu_gib, 2), devices=devices, effective_batch=effective_batch,
        batch_size=batch, gradient_accumulation=math.ceil(per_device / batch) if fits else 0,
        gradient_checkpointing=use_checkpointing if fits else True,
        estimate_gib=round(estimate_bytes(fixed, activations, shown, use_checkpointing or not fits) / GIB, 2),
        fits=fits, fixed_gib=round(fixed / GIB, 2),
        per_image_mib=round((activations.per_image_checkpointed if (use_checkpointing or not fits)
                             else activations.per_image) / 2 ** 20, 1))


# ------------------------------------------------------------------------------------------- the two trainers


def vavae_requirements(cfg) -> tuple[int, int, ActivationMemory]:
    """(trainable parameters, frozen parameters on the GPU, activations per image) of a VA-VAE stage with config
    ``cfg``; built on the meta device, so this is quick and needs no weights."""
    import timm

    from models.discriminator import create_discriminator
    from models.perceptual import create_lpips
    from models.vavae import create_vavae

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LPIPS warns about its random backbone: only shapes matter here
        vae = create_vavae(str(cfg.vae.preset))
        perceptual = create_lpips(str(cfg.vae_loss.lpips_net), allow_random_backbone=True, download=False)
        discriminator = create_discriminator("patchgan", num_layers=int(cfg.vae_loss.disc_num_layers),
                                             ndf=int(cfg.vae_loss.disc_channels))
        foundation = timm.create_model(str(cfg.vae.vf_model), pretrained=False)
    perceptual.to("meta")  # LPIPS makes its input scaling constants with a constructor that ignores the device
    activations = vavae_step_memory(vae, perceptual, discriminator, int(cfg.data.image_size))
    return (_parameters(vae) + _parameters(discriminator), _parameters(perceptual) + _parameters(foundation),
            activations)


def vavae_effective_batch(cfg, devices: int) -> int:
    return int(cfg.vae_train.batch_size) * max(1, int(cfg.vae_train.gradient_accumulation)) * devices


def plan_vavae(cfg, gpu: str, gpu_gib: float, devices: int, effective_batch: Optional[int] = None) -> MemoryPlan:
    """The VA-VAE stage's plan for ``devices`` GPUs of ``gpu_gib`` each."""
    trainable, frozen, activations = vavae_requirements(cfg)
    fixed = (16 + (4 if devices > 1 else 0)) * trainable + 4 * frozen + RUNTIME_OVERHEAD
    return choose("VA-VAE", gpu, gpu_gib, devices, effective_batch or vavae_effective_batch(cfg, devices), fixed,
                  activations)


def plan_targets(configs: dict) -> list[MemoryPlan]:
    """Plans for the users' machines (:data:`TARGETS`), each with its preset's config (``configs[preset]``)."""
    return [plan_vavae(configs[preset], gpu, gib, devices) for preset, (gpu, gib, devices) in TARGETS.items()]


def setup_plans(gpus: Sequence = ()) -> list[MemoryPlan]:
    """What step1 prints: the plan for the GPUs of this machine (when it has any, with the preset step1
    recommends for them) and for the users' two Kaggle machines."""
    from microdoppler_finetune.config import load_config
    from microdoppler_finetune.environment import recommend_preset

    configs = {preset: load_config(preset, None, []) for preset in TARGETS}
    plans = []
    if gpus:
        preset = recommend_preset(list(gpus))[0]
        cfg = configs.get(preset) or load_config(preset, None, [])
        name = f"this machine ({len(gpus)} x {gpus[0].name})"
        plans.append(plan_vavae(cfg, name, min(float(g.total_memory_gb) for g in gpus), len(gpus)))
    return plans + plan_targets(configs)
