"""Torch helpers: the device to run on, the model inside its wrappers, and a fingerprint of its weights."""
from __future__ import annotations

import hashlib
from typing import Mapping, Union

import torch


def pick_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto``/None: the first CUDA GPU when there is one, else the CPU; anything else as torch names it."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for, but this machine has no CUDA GPU: use 'cpu' or 'auto'.")
    return device


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP, ``torch.compile`` and peft wrappers (for its config and helper methods). peft
    injects its adapters into the inner model's layers, so the inner model still runs with them."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
            continue
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile
            model = model._orig_mod
            continue
        inner = getattr(getattr(model, "base_model", None), "model", None)  # peft.PeftModel -> LoraModel -> model
        if isinstance(inner, torch.nn.Module) and inner is not model:
            model = inner
            continue
        return model


def state_dict_fingerprint(weights: Union[torch.nn.Module, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over a state_dict: for each tensor in sorted name order, its name, dtype, shape and raw bytes."""
    state_dict = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
