"""The trained DiT as a diffusers folder: ``<run_dir>/pretrained/`` (``save_pretrained`` + ``sampling_info.json``).

Written by the trainer when training ends (finished, or stopped by the time budget), from the EMA weights with
any LoRA adapters merged::

    pretrained/config.json                          LightningDiT's constructor arguments (diffusers config)
    pretrained/diffusion_pytorch_model.safetensors  the weights
    pretrained/sampling_info.json                   what sampling needs besides the network (see SAMPLING_KEYS)

It loads with ``LightningDiT.from_pretrained(folder)``; ``sample_dit.py --checkpoint`` takes it, a
``{step:07d}.pt`` checkpoint or the run folder (:func:`resolve_trained_dit`). The folder is written next to its
final place and swapped in, so an interrupted export never leaves a half-written ``pretrained/``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from microdoppler_finetune.dit.checkpointing import CHECKPOINT_DIRNAME, list_checkpoints
from microdoppler_finetune.utils.files import swap_in_folder, temporary_sibling

PRETRAINED_DIRNAME = "pretrained"
SAMPLING_INFO_FILE = "sampling_info.json"
FORMAT = "microdoppler_finetune.dit.pretrained/1"
# The checkpoint's "data" entries sampling needs (names, shapes, the encoder it was trained with, seen pairs).
SAMPLING_KEYS = ("person_names", "condition_names", "latent_shape", "image_size", "vae_identity", "seen_pairs",
                 "latents_mean", "latents_std")


def is_pretrained_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / SAMPLING_INFO_FILE).is_file()


def write_pretrained(model: torch.nn.Module, data_info: dict, step: int, target: str | Path, *,
                     weights: str = "ema", extra: Optional[dict] = None) -> Path:
    """``model`` (a plain LightningDiT) with ``save_pretrained`` plus ``sampling_info.json``, swapped in atomically."""
    target = Path(target)
    tmp = temporary_sibling(target)
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed export of this process id
    try:
        model.save_pretrained(str(tmp))  # config.json + diffusion_pytorch_model.safetensors
        info = {"format": FORMAT, "step": int(step), "weights": weights,
                **{key: data_info.get(key) for key in SAMPLING_KEYS}, **(extra or {})}
        (tmp / SAMPLING_INFO_FILE).write_text(json.dumps(info, indent=2))
        swap_in_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def read_sampling_info(folder: str | Path) -> dict:
    info = json.loads((Path(folder) / SAMPLING_INFO_FILE).read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{folder / SAMPLING_INFO_FILE} has format {info.get('format')!r}, expected {FORMAT!r}.")
    return info


def load_pretrained(folder: str | Path, *, device: str | torch.device = "cpu"):
    """(LightningDiT in eval mode, info) from a ``pretrained/`` folder; info has the keys of a checkpoint's info
    (``step``, ``data``, ``dit_config``) plus ``weights``."""
    from models.dit import LightningDiT, dit_config_dict

    folder = Path(folder)
    meta = read_sampling_info(folder)
    model = LightningDiT.from_pretrained(str(folder)).to(device).eval()  # eval: no label dropout while sampling
    info = {"step": int(meta["step"]), "weights": meta.get("weights", "ema"),
            "data": {key: meta.get(key) for key in SAMPLING_KEYS}, "dit_config": dit_config_dict(model)}
    return model, info


def resolve_trained_dit(path: str | Path) -> Path:
    """What ``--checkpoint`` points at, as one loadable path: a ``{step:07d}.pt`` file or a ``pretrained/`` folder.

    A run folder (``<work_dir>/dit``) gives its ``pretrained/`` export unless a checkpoint with a higher step
    exists (a run that stopped without exporting: then that checkpoint, and the choice is printed); a
    ``checkpoints/`` folder gives its highest step.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist.")
    if is_pretrained_folder(path):
        return path
    checkpoints = list_checkpoints(path / CHECKPOINT_DIRNAME) or list_checkpoints(path)
    pretrained = path / PRETRAINED_DIRNAME
    if is_pretrained_folder(pretrained):
        step = int(read_sampling_info(pretrained)["step"])
        if not checkpoints or checkpoints[-1][0] <= step:
            return pretrained
        print(f"NOTE: {pretrained} holds step {step}, {checkpoints[-1][1]} a later one: using the checkpoint.",
              flush=True)
    if checkpoints:
        return checkpoints[-1][1]
    raise FileNotFoundError(f"No {PRETRAINED_DIRNAME}/ export and no {{step:07d}}.pt checkpoint in {path}.")


def trained_dit_summary(path: str | Path) -> dict:
    """``step`` and ``num_conditions`` of a trained DiT (export folder or checkpoint) without building the model."""
    from models.checkpoints import load_torch_file

    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return {"step": int(read_sampling_info(path)["step"]), "num_conditions": int(config.get("num_conditions", 0))}
    content = load_torch_file(path)  # memory-mapped: the weights are not read
    return {"step": int(content.get("step", -1)),
            "num_conditions": int(content.get("dit_config", {}).get("num_conditions", 0))}
