"""Building the DiT for training and sampling (models.dit), and the calls into models.transport.

Three ways to get a model:
- resuming / sampling: the ``dit_config`` stored in our checkpoint (the architecture is the checkpoint's);
- ``init_from``: a released LightningDiT (or one of our checkpoints) loaded with ``load_dit`` and, when its
  person table does not fit the data, adapted with ``adapt_class_embedding`` (new person rows + null row, a new
  condition table); the latent grid and channels must match the data;
- otherwise: ``create_dit(cfg.dit.model, ...)`` with random weights sized for the latent cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf


def _use_conditions(cfg: DictConfig, num_conditions: int) -> bool:
    wanted = cfg.dit.use_conditions
    if wanted is None:
        return num_conditions > 1
    if bool(wanted) and num_conditions < 1:
        raise ValueError("dit.use_conditions=true, but the latent cache lists no walking conditions.")
    return bool(wanted)


def build_dit(dit_config: Optional[dict], *, data=None, cfg: Optional[DictConfig] = None,
              init_from: Optional[str] = None) -> torch.nn.Module:
    from models.dit import LightningDiT, adapt_class_embedding, create_dit

    if dit_config is not None:
        return LightningDiT(**{k: v for k, v in dit_config.items() if not str(k).startswith("_")})
    if data is None or cfg is None:
        raise ValueError("build_dit needs the data and the config when no dit_config is given.")
    channels, height, width = data.latent_shape
    if height != width:
        raise ValueError(f"The DiT needs square latents; the cache has {height}x{width}.")
    num_conditions = data.num_conditions if _use_conditions(cfg, data.num_conditions) else 0
    if init_from:
        ft = cfg.dit.finetune
        print(f"Initialising the DiT from {init_from} ({ft.init_weights} weights)", flush=True)
        model = _load_init_weights(init_from, use_ema=str(ft.init_weights) == "ema",
                                   trust_pickle=bool(ft.trust_pickle))
        c = model.config
        if int(c.in_channels) != channels or int(c.input_size) != height:
            raise ValueError(f"{init_from} models {c.in_channels}-channel {c.input_size}x{c.input_size} latents, "
                             f"the latent cache has {channels}x{height}x{width}. Fine-tuning needs the same VA-VAE "
                             f"latent shape (f16d32 at 256 px: 32x16x16).")
        if int(c.num_classes) != data.num_persons or int(c.num_conditions) != num_conditions:
            model = adapt_class_embedding(model, data.num_persons, num_conditions)
        model.train()
        return model
    overrides = dict(OmegaConf.to_container(cfg.dit.model_overrides, resolve=True) or {})
    overrides.update(input_size=height, in_channels=channels, num_classes=data.num_persons,
                     num_conditions=num_conditions)
    return create_dit(str(cfg.dit.model), **overrides)


def _load_init_weights(path: str, *, use_ema: bool, trust_pickle: bool) -> torch.nn.Module:
    """A released LightningDiT / any load_dit file; one of our LoRA checkpoints comes back with LoRA merged."""
    from models.checkpoints import KeyMismatchError, load_torch_file
    from models.dit import load_dit

    if str(path).endswith((".pt", ".pth", ".ckpt")):
        content = load_torch_file(path, trust_pickle=trust_pickle)  # memory-mapped: cheap to look inside
        if isinstance(content, dict) and content.get("lora") and "dit_config" in content:
            return load_trained_dit(path, use_ema=use_ema, trust_pickle=trust_pickle)[0]
        del content
    try:
        return load_dit(path, use_ema=use_ema, trust_pickle=trust_pickle)
    except KeyMismatchError as exc:
        if str(path) in str(exc):
            raise
        raise KeyMismatchError(f"--init_from {path}: {exc} Pass a released LightningDiT file or a checkpoint of "
                               f"train_conditional_dit.py.") from exc


def dit_config_of(model: torch.nn.Module) -> dict:
    from models.dit import dit_config_dict

    return dit_config_dict(model)


def num_blocks_of(model: torch.nn.Module) -> int:
    from microdoppler_finetune.dit.contrastive import find_transformer_blocks

    return len(find_transformer_blocks(model))


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """diffusers' switch: blocks recompute their activations in the backward pass."""
    model.enable_gradient_checkpointing()


def model_forward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, person: torch.Tensor,
                  condition: Optional[torch.Tensor]) -> torch.Tensor:
    """Velocity [B, C, h, w]; works through DDP and peft wrappers (they forward positional arguments)."""
    return model(x, t, person, condition)


def null_condition_id(model: torch.nn.Module) -> Optional[int]:
    """The condition table's null id, None when the DiT has no condition table."""
    from microdoppler_finetune.utils.tensors import unwrap_model

    return unwrap_model(model).condition_null_id


def sample_with_transport(model: torch.nn.Module, noise: torch.Tensor, person: torch.Tensor,
                          condition: Optional[torch.Tensor], settings) -> torch.Tensor:
    """ODE sampling (models.transport.sample_ode) from ``noise`` [B, C, h, w] to DiT-space latents."""
    from microdoppler_finetune.utils.tensors import unwrap_model
    from models.transport import sample_ode

    dit = unwrap_model(model)
    # settings.num_sampling_steps counts grid points as the release does (250 -> 249 Euler steps); a shift <= 0
    # means no shift and a cfg_scale <= 1 no guidance (models.transport).
    velocity_fn = dit.velocity_fn(person, condition, guide=getattr(settings, "guide", "both"))
    return sample_ode(velocity_fn, noise, num_sampling_steps=int(settings.num_sampling_steps),
                      method=str(settings.sampler), timestep_shift=float(settings.shift),
                      cfg_scale=float(settings.cfg_scale), cfg_interval_start=float(settings.cfg_interval_start))


def load_trained_dit(checkpoint: str | Path, *, use_ema: bool = True, trust_pickle: bool = False,
                     device: str | torch.device = "cpu"):
    """(plain DiT in eval mode with LoRA merged, info without weights) from our training checkpoint
    ``{step:07d}.pt`` or from a ``pretrained/`` folder (``LightningDiT.from_pretrained``; EMA weights only).

    info: ``step``, ``data`` (person/condition names, latent shape, image size, VA-VAE identity, seen pairs),
    ``dit_config``, ``weights`` ("ema" or "model").
    """
    from microdoppler_finetune.dit.checkpointing import load_checkpoint
    from microdoppler_finetune.dit.export import load_pretrained
    from microdoppler_finetune.dit.finetune import LoraSettings, apply_lora, merge_lora

    path = Path(checkpoint)
    if path.is_dir():  # one load path for folders: from_pretrained
        model, info = load_pretrained(path, device=device)
        if use_ema != (info["weights"] == "ema"):
            raise ValueError(f"{path} holds the {info['weights']} weights only; for the "
                             f"{'EMA' if use_ema else 'raw (--no_ema)'} weights pass a {{step:07d}}.pt checkpoint.")
        return model, info
    content = load_checkpoint(path, trust_pickle=trust_pickle)
    if "dit_config" not in content or "data" not in content:
        raise ValueError(f"{path} is not a checkpoint of train_conditional_dit.py (no dit_config/data entries). A "
                         f"released LightningDiT file has no person table for your data: fine-tune it first with "
                         f"train_conditional_dit.py --init_from {path}.")
    key = "ema" if use_ema else "model"
    model = build_dit(content["dit_config"], data=None, cfg=None, init_from=None)
    lora = LoraSettings.from_dict(content.get("lora"))
    if lora is not None:
        model = apply_lora(model, lora)
    from models.checkpoints import load_state_dict_checked

    load_state_dict_checked(model, content[key], source=f"{path} [{key}]")
    model = merge_lora(model).to(device).eval()  # eval: no label dropout, no dropout while sampling
    info = {k: v for k, v in content.items() if k not in ("model", "ema", "opt", "scaler", "rng")}
    info["weights"] = key
    return model, info
