"""Per-channel latent statistics: the normalisation the DiT applies, (z - mean) / std per channel.

They are computed over the TRAINING latents exactly as the DiT sees them (posterior samples drawn with a fixed
seed; see microdoppler_finetune.latents.cache.encode_split) and have the layout of the released
``latents_stats.pt`` (one value per latent channel, pooled over images and positions). They are written once,
into the exported encoder's config (latents/export.py), and every later stage reads them from there.
"""
from __future__ import annotations

from typing import Optional

import torch


class ChannelStatistics:
    """Running per-channel mean and std of latents [B,C,h,w] over images and positions (float64 sums)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Optional[torch.Tensor] = None
        self.total_sq: Optional[torch.Tensor] = None

    def update(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4:
            raise ValueError(f"Expected latents shaped [B,C,h,w], got {tuple(latents.shape)}.")
        z = latents.detach().to(device="cpu", dtype=torch.float64)
        if self.total is None:
            self.total = torch.zeros(z.shape[1], dtype=torch.float64)
            self.total_sq = torch.zeros(z.shape[1], dtype=torch.float64)
        elif z.shape[1] != self.total.numel():
            raise ValueError(f"Latents with {z.shape[1]} channels after {self.total.numel()}-channel ones.")
        self.total += z.sum(dim=(0, 2, 3))
        self.total_sq += z.pow(2).sum(dim=(0, 2, 3))
        self.count += z.shape[0] * z.shape[2] * z.shape[3]

    def mean(self) -> torch.Tensor:
        self._check()
        return (self.total / self.count).float()

    def std(self) -> torch.Tensor:
        """Population std (the count is images x positions, so the unbiased correction is negligible)."""
        self._check()
        mean = self.total / self.count
        variance = (self.total_sq / self.count - mean.pow(2)).clamp_min(0)
        return variance.sqrt().float()

    def _check(self) -> None:
        if self.total is None or self.count == 0:
            raise ValueError("No latents were added: the training split encoded to nothing.")


def channel_statistics(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean [C], std [C]) of latents [N,C,h,w]."""
    stats = ChannelStatistics()
    stats.update(latents)
    return stats.mean(), stats.std()


def statistics_summary(mean: torch.Tensor, std: torch.Tensor, latents: torch.Tensor) -> dict:
    """JSON-ready description; the normalised latents should have mean ~0 and std ~1 per channel."""
    normalised = (latents.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1).clamp_min(1e-12)
    return {
        "latents_mean": [float(v) for v in mean],
        "latents_std": [float(v) for v in std],
        "num_images": int(latents.shape[0]),
        "latent_shape": list(latents.shape[1:]),
        "overall_mean": float(latents.float().mean()),
        "overall_std": float(latents.float().std()),
        "min_channel_std": float(std.min()),
        "max_channel_std": float(std.max()),
        # Channels the encoder hardly uses (tiny std) blow up under normalisation: worth knowing before the DiT.
        "near_constant_channels": [int(i) for i in torch.nonzero(std < 1e-3).flatten()],
        "normalised_abs_max": float(normalised.abs().max()),
    }
