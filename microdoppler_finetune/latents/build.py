"""Encoding the manifest's splits with a VA-VAE, and the latent cache the DiT trains on.

step5 encodes once and uses the result for the latent statistics, the export and the cache; the DiT trainer
rebuilds a missing cache from the exported encoder with the same code (and the export's own statistics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from microdoppler_finetune.latents.cache import EncodedSplit, encode_split, write_latent_cache
from microdoppler_finetune.latents.export import load_exported_vae, read_export_info, read_latent_statistics
from microdoppler_finetune.utils.files import path_sha256
from microdoppler_finetune.utils.tensors import pick_device

CACHE_SPLITS = ("train", "val")


def encode_manifest_splits(model: torch.nn.Module, manifest, splits: Sequence[str], *, image_size: int,
                           sample_seed: int, batch_size: int, device, flip: bool, num_workers: int = 0,
                           max_images: Optional[int] = None) -> Dict[str, EncodedSplit]:
    """Every image of each split (at most ``max_images``, spread over the split), with fixed-seed posterior
    samples; ``flip`` adds flipped copies (only when training flips too)."""
    from microdoppler_finetune.data import MicroDopplerDataset
    from microdoppler_finetune.data.dataset import evenly_spaced_subset

    encoded = {}
    for split in splits:
        # No random flip here: the cache's originals are the real images (flipped copies are explicit).
        dataset = MicroDopplerDataset(manifest, split, image_size=image_size, flip=False)
        if len(dataset) == 0:
            raise ValueError(f"The '{split}' split of {manifest.path} is empty; the latent statistics and cache need "
                             f"train and val images. Re-split with step3 into a new --dataset_dir.")
        subset = evenly_spaced_subset(dataset, max_images)
        encoded[split] = encode_split(model, subset, split, sample_seed=sample_seed, batch_size=batch_size,
                                      device=device, flip_copies=flip, num_workers=num_workers)
    return encoded


def build_cache_with_exported_encoder(export_dir: str | Path, manifest_file: str | Path, out_dir: str | Path, *,
                                      image_size: int, sample_seed: int = 0, batch_size: int = 16,
                                      device: str = "auto", flip: bool = False, num_workers: int = 0,
                                      shard_size: int = 2048, data_root: Optional[str] = None) -> Path:
    """The train/val latent cache of ``manifest_file`` encoded by step5's exported encoder; returns its info file."""
    from microdoppler_finetune.data import load_manifest

    export_dir = Path(export_dir)
    manifest = load_manifest(manifest_file, data_root=data_root) if data_root else load_manifest(manifest_file)
    target = pick_device(device)
    model = load_exported_vae(export_dir).to(target).float().eval()
    mean, std = read_latent_statistics(export_dir)
    encoded = encode_manifest_splits(model, manifest, CACHE_SPLITS, image_size=image_size, sample_seed=sample_seed,
                                     batch_size=batch_size, device=target, flip=flip, num_workers=num_workers)
    return write_latent_cache(
        encoded, out_dir, vae_identity_hash=read_export_info(export_dir)["vae_identity"],
        manifest_path=Path(manifest_file), image_size=image_size, latents_mean=mean, latents_std=std,
        sample_seed=sample_seed, flip=flip, shard_size=shard_size, complete=True,
        extra_info={"source_checkpoint": str(export_dir.resolve()), "source_sha256": path_sha256(export_dir),
                    "person_names": list(manifest.person_names), "condition_names": list(manifest.condition_names)})
