"""Peak training memory of the DiT per size preset and fine-tuning setting: an analytic estimate, and a
measurement (torch.cuda.max_memory_allocated) when a CUDA GPU is present.

    python benchmarks/bench_dit_memory.py                                   # table of estimates (any machine)
    python benchmarks/bench_dit_memory.py --measure --presets XL/1 B/2      # + measured peaks on a GPU
    python benchmarks/bench_dit_memory.py --batch_size 4 --precision fp32 --gradient_checkpointing

Settings: full (every parameter trains), freeze (person/condition tables only), lora16 (frozen backbone + LoRA
rank 16 on qkv/proj/w12/w3 + tables), lora16+last4 (as lora16, and the last 4 blocks unfrozen).

Estimate (bytes): weights 4·P (fp32 master weights, autocast) + EMA copy 4·P (diffusers' EMAModel keeps a shadow
copy of every parameter)
+ gradients 4·T + AdamW states 8·T (T = trainable parameters) + autocast's 16-bit weight copies 2·P (fp16/bf16)
+ activations. Activations per block and sample
≈ k·N·D bytes (N tokens, D width) with k = 50 in fp16/bf16 and 100 in fp32 (adaLN-modulated pre-norm block,
SwiGLU, fused SDPA attention that stores no N×N matrix, RMSNorm in fp32), times depth; with gradient
checkpointing only each block's input (2 or 4 bytes·N·D) plus one block's activations. For frozen layers
autograd does not keep the inputs of linears whose weight needs no gradient, so the activation term is an
upper bound for freeze/LoRA. The CUDA context (~0.5 GB) and allocator fragmentation are not included; measure
to be sure.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from typing import Optional

import torch

SETTINGS = ("full", "freeze", "lora16", "lora16+last4")
DEFAULT_PRESETS = ("S/2", "B/2", "L/2", "XL/2", "XL/1")


def build_meta_model(preset: str, latent_size: int, channels: int, persons: int, conditions: int):
    from models.dit import create_dit

    with torch.device("meta"):
        return create_dit(preset, input_size=latent_size, in_channels=channels, num_classes=persons,
                          num_conditions=conditions)


def trainable_count(model: torch.nn.Module, setting: str, lora_rank: int = 16,
                    targets=("qkv", "proj", "w12", "w3")) -> int:
    """Trainable parameters the trainer would have for ``setting`` (LoRA counted from the layer shapes)."""
    from microdoppler_finetune.dit.finetune import lora_target_regex

    total = sum(p.numel() for p in model.parameters())
    if setting == "full":
        return total
    tables = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("y_embedder", "condition_embedder")))
    count = tables
    if setting.startswith("lora"):
        pattern = re.compile(lora_target_regex(targets))
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name):
                count += lora_rank * (module.in_features + module.out_features)
    match = re.search(r"last(\d+)", setting)
    if match:
        last = int(match.group(1))
        depth = len(model.blocks)
        count += sum(p.numel() for n, p in model.named_parameters()
                     if n.startswith("blocks.") and int(n.split(".")[1]) >= depth - last)
    return count


def estimate_bytes(model, setting: str, batch: int, precision: str, checkpointing: bool) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = trainable_count(model, setting)
    tokens = model.grid_size ** 2
    hidden = model.config.hidden_size
    depth = model.config.depth
    half = precision in ("fp16", "bf16")
    per_block = (50 if half else 100) * tokens * hidden * batch
    if checkpointing:
        activations = depth * (2 if half else 4) * tokens * hidden * batch + per_block
    else:
        activations = depth * per_block
    parts = {"weights": 4 * total, "ema": 4 * total, "grads": 4 * trainable, "adam": 8 * trainable,
             # autocast keeps a 16-bit copy of every weight it cast, for the whole forward/backward
             "autocast_copies": 2 * total if half else 0, "activations": activations}
    parts["total"] = sum(parts.values())
    return {"params": total, "trainable": trainable, **parts}


def measure_peak(preset: str, setting: str, batch: int, precision: str, checkpointing: bool, latent_size: int,
                 channels: int, persons: int, conditions: int, steps: int = 3) -> dict:
    """Real training steps on the GPU (the trainer's pieces: LoRA, trainable rule, EMA, AdamW, autocast)."""
    from microdoppler_finetune.dit.ema import DiTEMA
    from microdoppler_finetune.dit.finetune import LoraSettings, TrainableRule, apply_lora, apply_trainable_rule
    from microdoppler_finetune.dit.objective import sample_timesteps, velocity_loss_per_sample
    from models.dit import create_dit

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = create_dit(preset, input_size=latent_size, in_channels=channels, num_classes=persons,
                       num_conditions=conditions)
    depth = model.config.depth
    if checkpointing:
        model.enable_gradient_checkpointing()
    if setting.startswith("lora"):
        model = apply_lora(model, LoraSettings(16, 16.0, ("qkv", "proj", "w12", "w3"), 0.0))
    last = int(re.search(r"last(\d+)", setting).group(1)) if "last" in setting else 0
    rule = TrainableRule(freeze_backbone=setting != "full", always_trainable=("y_embedder", "condition_embedder"),
                         schedule=[(0, last)] if last else [])
    apply_trainable_rule(model, rule, 0, depth)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    ema = DiTEMA(model, 0.9999)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    timings = []
    for _ in range(steps):
        x1 = torch.randn(batch, channels, latent_size, latent_size, device=device)
        x0 = torch.randn_like(x1)
        person = torch.randint(0, persons, (batch,), device=device)
        condition = torch.randint(0, conditions, (batch,), device=device) if conditions else None
        t = sample_timesteps(batch, device)
        torch.cuda.synchronize()
        tick = time.time()
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            loss = velocity_loss_per_sample(lambda xt, tt: model(xt, tt, person, condition), x1, x0, t).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model)
        torch.cuda.synchronize()
        timings.append(time.time() - tick)
    peak = torch.cuda.max_memory_allocated()
    return {"measured_peak": peak, "step_s": min(timings[1:] or timings)}


def gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--batch_size", type=int, default=8, help="per GPU")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--latent_size", type=int, default=16, help="16: 256 px images through the f16 VA-VAE")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--persons", type=int, default=31)
    p.add_argument("--conditions", type=int, default=8)
    p.add_argument("--measure", action="store_true", help="also run real steps on the GPU (needs CUDA)")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    measure = args.measure and torch.cuda.is_available()
    if args.measure and not measure:
        print("No CUDA GPU: printing estimates only.")
    rows = []
    header = (f"{'preset':7} {'setting':13} {'params M':>9} {'train M':>9} {'wts+EMA+16b':>11} {'grads+Adam':>10} "
              f"{'activ.':>7} {'est. GiB':>8} {'meas. GiB':>9} {'step s':>7}")
    print(f"batch {args.batch_size}/GPU, {args.precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, latents {args.channels}x{args.latent_size}x"
          f"{args.latent_size}, {args.persons} persons, {args.conditions} conditions")
    print(header)
    for preset in args.presets:
        meta = build_meta_model(preset, args.latent_size, args.channels, args.persons, args.conditions)
        for setting in args.settings:
            est = estimate_bytes(meta, setting, args.batch_size, args.precision, args.gradient_checkpointing)
            row = {"preset": preset, "setting": setting, "batch_size": args.batch_size,
                   "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing, **est}
            if measure:
                try:
                    row.update(measure_peak(preset, setting, args.batch_size, args.precision,
                                            args.gradient_checkpointing, args.latent_size, args.channels,
                                            args.persons, args.conditions))
                except torch.cuda.OutOfMemoryError:
                    row["measured_peak"] = "OOM"
                    torch.cuda.empty_cache()
            rows.append(row)
            measured = row.get("measured_peak")
            print(f"{preset:7} {setting:13} {est['params'] / 1e6:9.1f} {est['trainable'] / 1e6:9.2f} "
                  f"{gib(est['weights'] + est['ema'] + est['autocast_copies']):>11} "
                  f"{gib(est['grads'] + est['adam']):>10} "
                  f"{gib(est['activations']):>7} {gib(est['total']):>8} "
                  f"{measured if isinstance(measured, str) else gib(measured):>9} "
                  f"{row.get('step_s', float('nan')):7.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
