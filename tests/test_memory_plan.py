"""The memory planner: per-image activation memory counted on the meta device equals what a real forward pass
keeps, and the plan keeps the preset's effective batch, uses checkpointing only when it must, and says when
nothing fits."""
from __future__ import annotations

import pytest
import torch

from microdoppler_finetune.memory import SavedTensorCounter, vavae_step_memory
from microdoppler_finetune.memory.activations import ActivationMemory, vavae_blocks
from microdoppler_finetune.memory.plan import GIB, choose
from models.discriminator import create_discriminator
from models.vavae import create_vavae


class TinyPerceptual(torch.nn.Module):
    """A stand-in for LPIPS with the same call (two images -> per-sample distance), no weights to fetch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)

    def forward(self, a, b):
        return (self.conv(a) - self.conv(b)).pow(2).mean(dim=(1, 2, 3))


def networks(device):
    with torch.device(device):
        torch.manual_seed(0)
        return (create_vavae("tiny_f8"), TinyPerceptual(), create_discriminator("tiny"))


def test_meta_count_equals_the_real_forward_pass():
    meta = vavae_step_memory(*networks("meta"), image_size=32)
    real_vae, perceptual, disc = networks("cpu")
    real = vavae_step_memory(real_vae, perceptual, disc, image_size=32, device="cpu")
    assert meta.per_image > 0
    assert meta.per_image == pytest.approx(real.per_image, rel=0.02)
    assert meta.per_image_checkpointed == pytest.approx(real.per_image_checkpointed, rel=0.05)
    assert meta.per_image_checkpointed < meta.per_image  # checkpointing keeps block inputs, not their insides


def test_activations_grow_with_the_image_area():
    small = vavae_step_memory(*networks("meta"), image_size=32)
    large = vavae_step_memory(*networks("meta"), image_size=64)
    assert large.per_image == pytest.approx(4 * small.per_image, rel=0.1)


def test_counter_sees_each_block_once_and_the_blocks_inputs():
    vae, _, _ = networks("meta")
    counter = SavedTensorCounter(vavae_blocks(vae))
    with counter.counting():
        vae(torch.zeros(2, 3, 32, 32, device="meta"))
    assert set(counter.per_block) == set(range(len(vavae_blocks(vae))))
    assert 0 < counter.block_inputs < counter.total
    assert counter.checkpointed_total() < counter.total


MIB = 2 ** 20


def test_plan_keeps_the_effective_batch_and_prefers_no_checkpointing():
    act = ActivationMemory(per_image=1000 * MIB, per_image_checkpointed=300 * MIB)
    plan = choose("VA-VAE", "gpu", 16.0, 1, 16, fixed=2 * GIB, activations=act)
    assert plan.fits and not plan.gradient_checkpointing
    assert plan.batch_size * plan.gradient_accumulation == 16 and 16 % plan.batch_size == 0
    assert plan.estimate_gib <= 0.92 * 16
    assert plan.batch_size == 8  # 2 + 1.15 * 8 * 0.98 GiB = 11 GiB fits; 16 would not
    two = choose("VA-VAE", "gpu", 16.0, 2, 16, fixed=2 * GIB, activations=act)
    assert two.batch_size * two.gradient_accumulation * 2 == 16


def test_plan_checkpoints_only_when_the_batch_would_be_tiny_and_says_when_nothing_fits():
    big = ActivationMemory(per_image=6000 * MIB, per_image_checkpointed=1000 * MIB)
    plan = choose("VA-VAE", "gpu", 16.0, 1, 16, fixed=2 * GIB, activations=big)
    assert plan.fits and plan.gradient_checkpointing and plan.batch_size == 8
    huge = ActivationMemory(per_image=40 * GIB, per_image_checkpointed=20 * GIB)
    none = choose("VA-VAE", "gpu", 16.0, 1, 16, fixed=2 * GIB, activations=huge)
    assert not none.fits and none.batch_size == 0 and "does not fit" in none.line()


def test_setup_plans_cover_the_users_machines():
    from microdoppler_finetune.memory import setup_plans

    plans = setup_plans(())
    assert [p.gpu for p in plans] == ["one P100 16 GB", "two T4 15 GB"]
    for plan in plans:
        assert plan.fits and plan.batch_size * plan.gradient_accumulation * plan.devices == plan.effective_batch
        assert 1000 < plan.per_image_mib < 4000  # f16d32 + LPIPS-VGG + PatchGAN at 256 px: ~1.8 GiB per image
