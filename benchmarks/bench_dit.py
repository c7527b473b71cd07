"""Parameter counts of every DiT preset, training step time and sampling time per image for one setting.

    python benchmarks/bench_dit.py                                   # mini preset, 8x8x32 latents (CPU demo size)
    python benchmarks/bench_dit.py --preset S/2 --latent_size 16 --batch 32
    python benchmarks/bench_dit.py --preset XL/1 --latent_size 16 --batch 16 --num_sampling_steps 250 --cfg_scale 6.7
    python benchmarks/bench_dit.py --counts_only

Training step = forward + backward + AdamW step of the flow-matching loss (logit-normal t, cosine term), the
DiT trainer's work per batch without data loading. Sampling = Euler/Heun ODE from noise over --num_sampling_steps
grid points (the release's count: 250 points = 249 steps) with guidance (guided steps run a doubled batch).
Weights are random: timing does not depend on them.
Prints one JSON line per measurement and writes them all to --out if given.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from models.dit import DIT_PRESETS, count_parameters, create_dit
from models.transport import Transport, make_noise, sample_ode


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini", help=f"one of {', '.join(DIT_PRESETS)}")
    parser.add_argument("--latent_size", type=int, default=8, help="latent side (image side / VAE factor)")
    parser.add_argument("--latent_channels", type=int, default=32)
    parser.add_argument("--num_persons", type=int, default=31)
    parser.add_argument("--num_conditions", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="training batch and sampling batch")
    parser.add_argument("--train_steps", type=int, default=3, help="timed training steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num_sampling_steps", type=int, default=11,
                        help="ODE grid points per sample, as the release counts them (250 = 249 steps)")
    parser.add_argument("--method", default="euler", choices=["euler", "heun"])
    parser.add_argument("--cfg_scale", type=float, default=1.0)
    parser.add_argument("--cfg_interval_start", type=float, default=0.125)
    parser.add_argument("--timestep_shift", type=float, default=0.3)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast dtype (weights stay fp32)")
    parser.add_argument("--grad_checkpointing", action="store_true")
    parser.add_argument("--counts_only", action="store_true", help="only print the parameter counts")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def parameter_counts(args) -> list[dict]:
    rows = []
    for name in DIT_PRESETS:
        rows.append({"what": "parameters", "preset": name, "imagenet_1000_classes": count_parameters(name),
                     "persons": args.num_persons, "conditions": args.num_conditions,
                     "with_person_tables": count_parameters(name, num_classes=args.num_persons,
                                                            num_conditions=args.num_conditions)})
    return rows


def time_training(model, args, device) -> dict:
    model.train()
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, betas=(0.9, 0.95))
    transport = Transport(time_sampling="logit_normal", use_cosine_loss=True)
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.latent_channels, args.latent_size, args.latent_size)
    latents = torch.randn(shape, generator=generator).to(device)
    persons = torch.randint(0, args.num_persons, (args.batch,), generator=generator).to(device)
    conditions = (torch.randint(0, args.num_conditions, (args.batch,), generator=generator).to(device)
                  if args.num_conditions else None)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.train_steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast(device, args.precision):
            loss = transport.training_losses(model, latents, generator=generator, person=persons,
                                             condition=conditions)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    row = {"what": "train_step", "seconds_median": statistics.median(times), "seconds_all": times}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return row


def time_sampling(model, args, device) -> dict:
    model.eval()  # no label dropout while sampling
    persons = torch.arange(args.batch, device=device) % args.num_persons
    conditions = (torch.arange(args.batch, device=device) % args.num_conditions) if args.num_conditions else None
    noise = make_noise((args.batch, args.latent_channels, args.latent_size, args.latent_size), seed=0,
                       device=device)
    velocity = model.velocity_fn(persons, conditions)
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, args.precision):
        sample_ode(velocity, noise, num_sampling_steps=args.num_sampling_steps, method=args.method,
                   timestep_shift=args.timestep_shift, cfg_scale=args.cfg_scale,
                   cfg_interval_start=args.cfg_interval_start)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"what": "sampling", "seconds_per_image": elapsed / args.batch,
            "seconds_per_image_per_step": elapsed / args.batch / (args.num_sampling_steps - 1),
            "ode_steps": args.num_sampling_steps - 1, "seconds_total": elapsed}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    rows = parameter_counts(args)
    if not args.counts_only:
        model = create_dit(args.preset, input_size=args.latent_size, in_channels=args.latent_channels,
                           num_classes=args.num_persons, num_conditions=args.num_conditions).to(device)
        setting = {k: v for k, v in vars(args).items() if k not in ("out", "counts_only")}
        setting.update(device=str(device), torch=torch.__version__, machine=platform.machine(),
                       threads=torch.get_num_threads(),
                       gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       parameters=sum(p.numel() for p in model.parameters()))
        rows.append({"what": "setting", **setting})
        rows.append(time_training(model, args, device))
        rows.append(time_sampling(model, args, device))
    lines = [json.dumps(row) for row in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
