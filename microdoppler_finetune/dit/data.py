"""The DiT's training data: the latent cache, normalised with the exported encoder's statistics.

The exported encoder folder (``vavae_encoder_for_dit``) carries ``latents_mean``/``latents_std`` in its
config.json; the DiT models (z - mean) / std per channel, and sampling undoes exactly that before decoding with
the same encoder. The cache must have been written by that encoder (its identity hash is checked).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from omegaconf import DictConfig

from microdoppler_finetune.latents.cache import CACHE_INFO_FILE, LatentCache, fixed_seed_noise, load_latent_cache
from microdoppler_finetune.latents.export import EXPORT_DIRNAME, read_latent_statistics


def export_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.dit.vae_encoder) if cfg.dit.vae_encoder else Path(cfg.run.work_dir) / "export" / EXPORT_DIRNAME


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.dit.run_dir) if cfg.dit.run_dir else Path(cfg.run.work_dir) / "dit"


def cache_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.dit.latent_cache) if cfg.dit.latent_cache else Path(cfg.run.work_dir) / "latents"


def build_missing_cache(cfg: DictConfig, export_dir: Path, cache_dir: Path) -> None:
    """Encode the manifest's train/val images with the exported encoder (what step5's cache part writes)."""
    from microdoppler_finetune.latents.build import build_cache_with_exported_encoder
    from vae_training.train import ensure_manifest

    default_dir = Path(cfg.run.work_dir) / "latents"
    if cache_dir.resolve() != default_dir.resolve():
        raise FileNotFoundError(f"No latent cache at --latent_cache {cache_dir} ({CACHE_INFO_FILE} missing). Leave "
                                f"--latent_cache out to build one in {default_dir}, or point it at step5's cache.")
    manifest = ensure_manifest(cfg)  # the run's one split (made by step3's prepare_dataset when missing)
    print(f"No latent cache in {cache_dir}: encoding the train/val images of {manifest} with {export_dir}", flush=True)
    build_cache_with_exported_encoder(
        export_dir, manifest, cache_dir, image_size=int(cfg.data.image_size),
        sample_seed=int(cfg.export.sample_seed), batch_size=int(cfg.export.batch_size), device=str(cfg.export.device),
        flip=bool(cfg.data.flip), num_workers=int(cfg.data.num_workers), shard_size=int(cfg.export.shard_size),
        data_root=cfg.data.data_root or None)


@dataclass
class LatentSplit:
    """One split in DiT space: normalised posterior means/stds and labels, all in memory."""

    mean: torch.Tensor  # [N, C, h, w] (mu - latents_mean) / latents_std
    std: torch.Tensor  # [N, C, h, w] sigma / latents_std
    fixed: torch.Tensor  # [N, C, h, w] the cache's fixed-seed sample, normalised
    person: torch.Tensor  # [N] int64
    condition: torch.Tensor  # [N] int64
    index: torch.Tensor  # [N] int64 manifest rows

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def batch(self, rows: torch.Tensor, *, resample: bool, generator: Optional[torch.Generator] = None,
              generators: Optional[List[torch.Generator]] = None):
        """Latents [B, C, h, w] (fresh posterior samples when ``resample``), person [B], condition [B].
        ``generators``: one per row (its sample then does not depend on the other rows of the batch)."""
        if resample:
            if generators is not None:
                eps = torch.stack([torch.randn(self.std.shape[1:], generator=g) for g in generators])
            else:
                eps = torch.randn(self.std[rows].shape, generator=generator)
            latents = self.mean[rows] + self.std[rows] * eps
        else:
            latents = self.fixed[rows]
        return latents, self.person[rows], self.condition[rows]


@dataclass
class DiTData:
    train: LatentSplit
    val: LatentSplit
    latents_mean: List[float]
    latents_std: List[float]
    latent_shape: List[int]  # [C, h, w]
    image_size: int
    person_names: List[str]
    condition_names: List[str]
    vae_identity: str
    cache_dir: str
    export_dir: str
    seen_pairs: List[List[int]] = field(default_factory=list)  # [person, condition] pairs in the train split

    @property
    def num_persons(self) -> int:
        return len(self.person_names)

    @property
    def num_conditions(self) -> int:
        return len(self.condition_names)

    def describe(self) -> dict:
        """Plain-type summary stored in every checkpoint (sampling needs nothing else)."""
        return {"latents_mean": self.latents_mean, "latents_std": self.latents_std,
                "latent_shape": self.latent_shape, "image_size": self.image_size,
                "person_names": self.person_names, "condition_names": self.condition_names,
                "vae_identity": self.vae_identity, "seen_pairs": self.seen_pairs,
                "train_count": len(self.train), "val_count": len(self.val),
                "latent_cache": self.cache_dir, "vae_encoder": self.export_dir}


def _to_split(cache: LatentCache, mean: torch.Tensor, std: torch.Tensor) -> LatentSplit:
    shape = (1, -1, 1, 1)
    m, s = mean.view(shape), std.view(shape)
    return LatentSplit(mean=(cache.posterior_mean.float() - m) / s, std=cache.posterior_std.float() / s,
                       fixed=(cache.latents.float() - m) / s, person=cache.person_id.long(),
                       condition=cache.condition_id.long(), index=cache.index.long())


def _names(info: dict, key: str, count_from: Sequence[torch.Tensor], manifest_hint: str) -> List[str]:
    names = info.get(key)
    if names:
        return [str(n) for n in names]
    # An older cache without names: fall back to the manifest it was written for.
    manifest = info.get("manifest")
    if manifest and Path(manifest).is_file():
        from microdoppler_finetune.data import load_manifest

        loaded = load_manifest(manifest)
        return list(loaded.person_names if key == "person_names" else loaded.condition_names)
    highest = max(int(t.max()) for t in count_from if len(t)) + 1
    print(f"WARNING: the latent cache lists no {key} and its manifest {manifest_hint} is not readable; using "
          f"numbers 0..{highest - 1}.", flush=True)
    return [str(i) for i in range(highest)]


def load_dit_data(cfg: DictConfig, *, build_cache: bool = True) -> DiTData:
    export_dir = export_dir_of(cfg)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"--vae_encoder {export_dir} does not exist. Export the fine-tuned VA-VAE first: "
                                f"python microdoppler_finetune/step5_validate_export.py --run <work_dir>/vae --export "
                                f"--cache")
    latents_mean, latents_std = read_latent_statistics(export_dir)
    cache_dir = cache_dir_of(cfg)
    if not (cache_dir / CACHE_INFO_FILE).is_file():
        if not build_cache:
            raise FileNotFoundError(f"No latent cache at {cache_dir}.")
        build_missing_cache(cfg, export_dir, cache_dir)
    train = load_latent_cache(cache_dir, expected_vae_identity=export_dir, split="train")
    val = load_latent_cache(cache_dir, expected_vae_identity=export_dir, split="val")
    info = train.info
    if len(latents_mean) != train.latents.shape[1]:
        raise ValueError(f"{export_dir} has statistics for {len(latents_mean)} channels, the cache latents have "
                         f"{train.latents.shape[1]}.")
    mean, std = torch.tensor(latents_mean), torch.tensor(latents_std)
    if not (torch.allclose(mean, train.latents_mean, rtol=1e-4, atol=1e-6)
            and torch.allclose(std, train.latents_std, rtol=1e-4, atol=1e-6)):
        print(f"NOTE: the cache's own statistics differ from the exported encoder's; the DiT uses the encoder's "
              f"({export_dir / 'config.json'}), which sampling also uses to decode.", flush=True)
    person_names = _names(info, "person_names", (train.person_id, val.person_id), str(info.get("manifest")))
    condition_names = _names(info, "condition_names", (train.condition_id, val.condition_id),
                             str(info.get("manifest")))
    pairs = sorted({(int(p), int(c)) for p, c in zip(train.person_id.tolist(), train.condition_id.tolist())})
    _refuse_withheld_training_pairs(info, [(person_names[p], condition_names[c]) for p, c in pairs], cache_dir)
    return DiTData(train=_to_split(train, mean, std), val=_to_split(val, mean, std), latents_mean=latents_mean,
                   latents_std=latents_std, latent_shape=list(train.latents.shape[1:]),
                   image_size=int(info["image_size"]), person_names=person_names, condition_names=condition_names,
                   vae_identity=str(info["vae_identity"]), cache_dir=str(cache_dir), export_dir=str(export_dir),
                   seen_pairs=[list(p) for p in pairs])


def _refuse_withheld_training_pairs(info: dict, pairs: List[tuple], cache_dir: Path) -> None:
    """The DiT must never train on a withheld person x condition pair (data/withhold.py): check the cache's train
    split against the manifest it was encoded from."""
    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.data.withhold import refuse_withheld_pairs

    manifest_file = Path(str(info.get("manifest", "")))
    if manifest_file.is_file():
        refuse_withheld_pairs(pairs, load_manifest(manifest_file).withholding,
                              f"The latent cache {cache_dir} (train split)")


def validation_noise(split: LatentSplit, rows: torch.Tensor, val_seed: int, t_position: int) -> torch.Tensor:
    """Fixed noise [B, C, h, w] per (val image, timestep position): the same numbers at every validation."""
    seeds = [(int(val_seed) * 1_000_003 + int(i) * 64 + int(t_position)) % (2**63 - 1) for i in split.index[rows]]
    return fixed_seed_noise(split.mean.shape[1:], seeds)
