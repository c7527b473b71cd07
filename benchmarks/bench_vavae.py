"""Forward + backward time per step of a VA-VAE preset.

    python benchmarks/bench_vavae.py --preset f16d32 --size 256 --batch 1
    python benchmarks/bench_vavae.py --preset tiny --size 64 --batch 32 --steps 5 --device cuda

The loss touches every trained output (reconstruction L1, KL, a cosine term on linear_proj(z)), like a
fine-tuning step without LPIPS, the discriminator and DINOv2.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from models.vavae import VAVAE_PRESETS, create_vavae


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(VAVAE_PRESETS))
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--grad_checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def step(model, x, target) -> None:
    out = model(x)  # sampled latents, as in training
    loss = (F.l1_loss(out.reconstruction, x) + 1e-6 * out.posterior.kl().mean()
            + (1 - F.cosine_similarity(out.projected, target, dim=1)).mean())
    loss.backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = create_vavae(args.preset).to(device).train()
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    latent = args.size // model.downsample_factor
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    target = torch.randn(args.batch, model.config.foundation_dim, latent, latent, device=device)
    counts = model.num_parameters_split()
    print(f"preset {args.preset}: {counts['total'] / 1e6:.2f} M parameters ({counts['autoencoder'] / 1e6:.2f} M "
          f"without linear_proj); input {args.batch}x3x{args.size}x{args.size} -> latents "
          f"{args.batch}x{model.config.latent_channels}x{latent}x{latent}; device {device}, "
          f"threads {torch.get_num_threads()}, grad checkpointing {args.grad_checkpointing}")
    for _ in range(args.warmup):
        model.zero_grad(set_to_none=True)
        step(model, x, target)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        model.zero_grad(set_to_none=True)
        sync(device)
        started = time.perf_counter()
        step(model, x, target)
        sync(device)
        times.append(time.perf_counter() - started)
    line = (f"forward+backward: {statistics.median(times):.3f} s/step median, min {min(times):.3f}, "
            f"max {max(times):.3f} over {len(times)} steps ({args.batch / statistics.median(times):.2f} images/s)")
    if device.type == "cuda":
        line += f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    print(line)


if __name__ == "__main__":
    main()
