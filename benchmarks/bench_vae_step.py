"""Time per VA-VAE fine-tuning step (autoencoder + discriminator update), with and without the feature cache.

    python benchmarks/bench_vae_step.py                       # full f16d32 at 256 px, batch 1, DINOv2-L target
    python benchmarks/bench_vae_step.py --vae test --image_size 32 --vf_model vit_small_patch14_dinov2 --steps 3

Runs the real training step (vae_training.module.VAVAEFineTuneModule under a Lightning Trainer) on random
images. Weights are random (timm pretrained=False, LPIPS with a random backbone): timing does not depend on
them. The GAN is active from the first step (stage 2/3 conditions, the more expensive case). "with cache"
times steps whose DINOv2 features are already cached (every epoch after the first); "without cache" runs
DINOv2 in every step. Prints one JSON line per setting and writes them to --out if given.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset


class RandomImages(Dataset):
    """Fixed random images with stable manifest-like paths (the feature cache keys)."""

    def __init__(self, count: int, size: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, size, size, generator=generator) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "path": f"bench/{index}.jpg", "index": index, "person_id": 0,
                "condition_id": 0}


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def build_module(args, use_cache: bool):
    from models.discriminator import create_discriminator
    from models.foundation import FoundationFeatureCache, create_foundation_model
    from models.perceptual import create_lpips
    from models.vavae import create_vavae
    from vae_training.module import VAVAEFineTuneModule

    vae = create_vavae(args.vae)
    latent = args.image_size // vae.downsample_factor
    foundation = create_foundation_model(args.vf_model, pretrained=False, latent_size=latent)
    if foundation.feature_dim != vae.config.foundation_dim:
        vae = create_vavae(args.vae, foundation_dim=foundation.feature_dim)
    cache = FoundationFeatureCache.for_model(foundation, in_memory=True) if use_cache else None
    stage = dict(name="bench", epochs=1, learning_rate=1e-4, vf_weight=0.1, distmat_margin=0.25, cos_margin=0.5,
                 disc_start=0, init_from="random")
    loss_cfg = dict(perceptual_weight=1.0, kl_weight=1e-6, disc_weight=0.5, distmat_weight=1.0, cos_weight=1.0,
                    adaptive_vf=False)
    module = VAVAEFineTuneModule(
        vae, create_discriminator("patchgan"), stage=stage, loss_cfg=loss_cfg,
        train_cfg={"gradient_accumulation": 1}, perceptual=create_lpips(args.lpips, allow_random_backbone=True),
        foundation=foundation, feature_cache=cache, alignment_target=f"random-init {args.vf_model}")
    return module, cache


def run(args, use_cache: bool) -> dict:
    torch.manual_seed(0)
    module, cache = build_module(args, use_cache)
    data = RandomImages(args.images, args.image_size)
    if cache is not None:
        # Fill the cache first, as the first epoch does; the timed steps then only read it.
        module.frozen.to("cuda" if torch.cuda.is_available() else "cpu")
        for i in range(len(data)):
            item = data[i]
            device = module.frozen.foundation.mean.device
            cache.features_for_batch({"path": [item["path"]]}, item["image"][None].to(device), module.frozen.foundation)
    timer = StepTimer()
    steps = args.warmup + args.steps
    trainer = pl.Trainer(max_steps=-1, max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer], precision=args.precision,
                         num_sanity_val_steps=0)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    trainer.fit(module, loader)
    timed = timer.times[args.warmup:]
    return {
        "setting": "with feature cache" if use_cache else "without feature cache",
        "vae": args.vae, "vae_params_m": round(sum(p.numel() for p in module.vae.parameters()) / 1e6, 2),
        "alignment_target": f"random-init {args.vf_model}", "lpips": args.lpips,
        "image_size": args.image_size, "batch_size": args.batch_size, "precision": args.precision,
        "timed_steps": len(timed), "sec_per_step_median": round(statistics.median(timed), 3),
        "sec_per_step_all": [round(t, 3) for t in timed],
        "cache_hits": getattr(cache, "hits", None), "cache_misses": getattr(cache, "misses", None),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
        f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="f16d32", help="VA-VAE preset (models.vavae.VAVAE_PRESETS)")
    parser.add_argument("--vf_model", default="vit_large_patch14_dinov2.lvd142m")
    parser.add_argument("--lpips", default="vgg", choices=("vgg", "alex"))
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--settings", default="cache,nocache", help="comma list of: cache, nocache")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args()
    args.images = (args.warmup + args.steps) * args.batch_size
    results = []
    for setting in args.settings.split(","):
        result = run(args, use_cache=setting.strip() == "cache")
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        with open(Path(args.out), "a") as handle:
            for result in results:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
