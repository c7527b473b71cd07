"""Trainer hardware settings from ``vae_train``: accelerator, devices, DDP strategy and precision."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from microdoppler_finetune.environment import detect_gpus

PRECISIONS = {"32": "32-true", "32-true": "32-true", "fp32": "32-true",
              "16": "16-mixed", "16-mixed": "16-mixed", "fp16": "16-mixed",
              "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed"}


def parse_devices(value: Any):
    """"auto" | "2" (a count) | "0,1" / "1," (GPU ids) -> what Lightning's Trainer(devices=...) takes."""
    text = str(value).strip()
    if text in ("auto", "-1", ""):
        return "auto" if text != "-1" else -1
    if "," in text:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    if text.isdigit():
        return int(text)
    raise ValueError(f"--devices '{value}' not understood: use auto, a count like 2, or GPU ids like \"0,1\".")


def check_precision(precision: str, accelerator: str, gpus: list) -> str:
    """Normalise the precision name; refuse what the hardware cannot do, with the reason."""
    name = PRECISIONS.get(str(precision).strip().lower())
    if name is None:
        raise ValueError(f"--precision {precision}: use 32 (default, as released), 16-mixed (T4) or bf16-mixed "
                         f"(Ampere or newer GPUs).")
    if accelerator == "gpu":
        if name == "bf16-mixed" and not all(g.bf16 for g in gpus):
            names = ", ".join(f"{g.name} (compute {g.compute_capability})" for g in gpus if not g.bf16)
            raise ValueError(f"--precision bf16-mixed needs bf16 support (compute capability 8.0+); {names} lacks "
                             f"it. Use --precision 16-mixed (T4) or 32 (P100).")
    elif name == "16-mixed":
        raise ValueError("--precision 16-mixed needs a CUDA GPU; on the CPU use 32 (or bf16-mixed).")
    return name


def trainer_hardware(train: DictConfig) -> dict:
    """accelerator, devices, strategy, precision (or a precision plugin) and world size for pl.Trainer, plus a
    one-line description."""
    gpus = detect_gpus()
    accelerator = str(train.accelerator)
    if accelerator == "auto":
        accelerator = "gpu" if gpus else "cpu"
    if accelerator in ("gpu", "cuda") and not gpus:
        raise RuntimeError("vae_train.accelerator asks for a GPU but torch sees none (torch.cuda.is_available() is "
                           "False). Use --set vae_train.accelerator=cpu or fix the CUDA install.")
    accelerator = "gpu" if accelerator == "cuda" else accelerator
    devices = parse_devices(train.devices)
    if accelerator == "cpu" and isinstance(devices, list):
        raise ValueError(f"--devices {train.devices} names GPU ids, but this run is on the CPU (no GPU found). "
                         f"Use a count, e.g. --devices 2, for CPU processes.")
    if devices == "auto":
        world_size = len(gpus) if accelerator == "gpu" else 1
        devices = world_size if accelerator == "gpu" else 1
    elif isinstance(devices, list):
        world_size = len(devices)
    else:
        world_size = len(gpus) if devices == -1 else int(devices)
    precision = check_precision(str(train.precision), accelerator, gpus)
    strategy = str(train.strategy)
    if strategy == "auto":
        strategy = "ddp" if world_size > 1 else "auto"
    if strategy.startswith("ddp"):
        from lightning.pytorch.strategies import DDPStrategy

        if strategy == "ddp_spawn" or strategy.endswith("notebook"):
            raise ValueError(f"strategy '{strategy}' is not supported: run the step script as a process "
                             f"(!python ... in a notebook cell) with strategy ddp.")
        # find_unused_parameters=True: with two optimizers and manual optimisation each backward touches only
        # one of the autoencoder and the discriminator. The frozen alignment target and LPIPS are held
        # outside the module tree, so DDP neither wraps nor broadcasts them.
        strategy = DDPStrategy(find_unused_parameters=True,
                               process_group_backend="gloo" if accelerator == "cpu" else "nccl")
    plugins = []
    if precision == "16-mixed":
        # The NLL is a sum over pixels (~1e5 for a 256 px image): at the usual initial scale of 65536 the fp16
        # gradients overflow and the scaler would skip the first ~17 updates of every stage. Start low instead.
        import torch
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cuda", init_scale=float(train.amp_init_scale))
        plugins.append(MixedPrecision("16-mixed", "cuda", scaler=scaler))
    description = f"{accelerator} x{world_size}, precision {precision}"
    if world_size > 1:
        description += ", DDP (find_unused_parameters=True)"
    if accelerator == "gpu" and precision == "16-mixed" and any(not g.fp16 for g in gpus):
        description += " (WARNING: no fast fp16 on this GPU)"
    return {"accelerator": accelerator, "devices": devices, "strategy": strategy, "precision": precision,
            "plugins": plugins, "world_size": world_size, "description": description}
