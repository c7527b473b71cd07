"""The memory planner's estimate against what a real training step uses, on whatever device runs it.

    python benchmarks/bench_memory.py                          # CPU: the plans + the per-image count checked
    python benchmarks/bench_memory.py --device cuda            # GPU: + the measured peak of the planned step
    python benchmarks/bench_memory.py --device cuda --preset p100 --batch_size 4 --json out.json

1. The plans step1 prints (VA-VAE stage, one P100 16 GB, two T4 15 GB), from the per-image activation memory
   counted on the meta device (microdoppler_finetune.memory).
2. The count itself checked on real tensors: the same forward pass on ``--device`` at a small size
   (``--check_size``, default 64 px), counted by storage; the two should agree to about 1 %.
3. On a CUDA device: one real autoencoder update at the preset's size (the VA-VAE, LPIPS and PatchGAN with
   random weights, the frozen foundation model resident, Adam on the trainable networks), and its
   ``torch.cuda.max_memory_allocated`` against the planner's estimate at that batch.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from _bench_common import device_description


def networks(cfg, device, foundation: bool = True):
    import timm

    from models.discriminator import create_discriminator
    from models.perceptual import create_lpips
    from models.vavae import create_vavae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = create_vavae(str(cfg.vae.preset)).to(device)
        perceptual = create_lpips(str(cfg.vae_loss.lpips_net), allow_random_backbone=True, download=False).to(device)
        disc = create_discriminator("patchgan", num_layers=int(cfg.vae_loss.disc_num_layers),
                                    ndf=int(cfg.vae_loss.disc_channels)).to(device)
        target = timm.create_model(str(cfg.vae.vf_model), pretrained=False).to(device).eval() if foundation else None
    return vae, perceptual, disc, target


def count_check(cfg, device: str, size: int) -> dict:
    from microdoppler_finetune.memory import vavae_step_memory

    vae, perceptual, disc, _ = networks(cfg, device, foundation=False)
    real = vavae_step_memory(vae, perceptual, disc, size, device=device)
    meta_nets = [m.to("meta") for m in (vae, perceptual, disc)]
    meta = vavae_step_memory(*meta_nets, size, device="meta")
    return {"image_size": size, "meta_per_image_mib": meta.per_image / 2 ** 20,
            "real_per_image_mib": real.per_image / 2 ** 20,
            "meta_checkpointed_mib": meta.per_image_checkpointed / 2 ** 20,
            "real_checkpointed_mib": real.per_image_checkpointed / 2 ** 20}


def measured_peak(cfg, batch: int) -> dict:
    """One autoencoder update (GAN on) at the preset's image size on the GPU: peak allocated bytes."""
    from microdoppler_finetune.memory.plan import (
        BACKWARD_FACTOR,
        GIB,
        RUNTIME_OVERHEAD,
        estimate_bytes,
        vavae_requirements,
    )

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    vae, perceptual, disc, foundation = networks(cfg, "cuda")
    optimizer = torch.optim.Adam(list(vae.parameters()) + list(disc.parameters()), betas=(0.5, 0.9))
    size = int(cfg.data.image_size)
    x = torch.rand(batch, 3, size, size, device="cuda") * 2 - 1
    for _ in range(2):  # the second step has Adam's states allocated, as every later step
        out = vae(x, sample=True)
        loss = perceptual(x, out.reconstruction).sum() - disc(out.reconstruction).mean()
        loss = loss + out.projected.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    trainable, frozen, activations = vavae_requirements(cfg)
    estimate = estimate_bytes(16 * trainable + 4 * frozen + RUNTIME_OVERHEAD, activations, batch, False)
    del foundation
    return {"batch": batch, "measured_peak_gib": peak / GIB, "estimate_gib": estimate / GIB,
            "estimate_without_runtime_overhead_gib": (estimate - RUNTIME_OVERHEAD) / GIB,
            "backward_factor": BACKWARD_FACTOR}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="p100", help="config preset of the measured step (cuda only)")
    parser.add_argument("--batch_size", type=int, default=None, help="batch of the measured step (default: the plan's)")
    parser.add_argument("--check_size", type=int, default=64, help="image side of the count check")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from microdoppler_finetune.config import load_config
    from microdoppler_finetune.memory import setup_plans

    report = {"device": device_description() if args.device.startswith("cuda") else "cpu"}
    plans = setup_plans(())
    report["plans"] = [plan.to_dict() for plan in plans]
    print(f"VA-VAE memory plans (device of this run: {report['device']})")
    for plan in plans:
        print(f"  {plan.line()}")
    cfg = load_config(args.preset, None, [])
    check = count_check(cfg, args.device, args.check_size)
    report["count_check"] = check
    print(f"per-image activations at {check['image_size']} px ({cfg.vae.preset}): meta count "
          f"{check['meta_per_image_mib']:.1f} MiB, real forward pass {check['real_per_image_mib']:.1f} MiB; with "
          f"checkpointing {check['meta_checkpointed_mib']:.1f} vs {check['real_checkpointed_mib']:.1f} MiB")
    if args.device.startswith("cuda") and torch.cuda.is_available():
        plan = next(p for p in plans if p.gpu.startswith("one P100")) if args.preset == "p100" else plans[-1]
        peak = measured_peak(cfg, args.batch_size or plan.batch_size)
        report["measured"] = peak
        print(f"measured step at batch {peak['batch']}, {cfg.data.image_size} px: peak allocated "
              f"{peak['measured_peak_gib']:.2f} GiB; estimate {peak['estimate_gib']:.2f} GiB "
              f"({peak['estimate_without_runtime_overhead_gib']:.2f} without the runtime allowance)")
    else:
        print("no CUDA device: the estimate is not checked against a measured GPU peak in this run")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
