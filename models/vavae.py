"""The VA-VAE: an LDM KL autoencoder whose latents are aligned to a vision foundation model (DINOv2).

Architecture (DESIGN.md section 3): diffusers ``Encoder``/``Decoder`` building blocks, i.e. exactly the layout of
a diffusers ``AutoencoderKL`` (same module names, so :meth:`VAVAE.as_autoencoder_kl` hands the weights to plain
diffusers), plus the alignment head ``linear_proj`` (1x1 conv, latent_channels -> foundation_dim, no bias)
applied to the sampled latents. The architecture is the config: :data:`VAVAE_PRESETS` holds the release
(``f16d32``) and small presets for CPU tests and the demo; :func:`create_vavae` builds one.

Loading (:func:`load_vavae`) accepts the released LDM-format checkpoint (``.pt``/``.ckpt`` with a
``state_dict``, or the safetensors file step2 converts it to), our Lightning ``.ckpt`` files and our
``save_pretrained`` folders. The LDM -> diffusers key mapping is one table (:data:`LDM_KEY_RULES`) used in
both directions; :func:`checkpoint_filter_fn` applies it and refuses any key it cannot explain.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from models.checkpoints import (
    KeyMismatchError,
    load_state_dict_checked,
    load_torch_file,
    read_safetensors,
    report_key_mismatch,
    save_safetensors,
    summarize_keys,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

DOWN_PLAIN, DOWN_ATTN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
UP_PLAIN, UP_ATTN = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"


def block_types(num_levels: int, attention_levels: Sequence[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Diffusers down/up block types for attention at the given encoder levels (0 = full resolution).

    Decoder up block k works at encoder level ``num_levels - 1 - k`` (diffusers lists up blocks from the
    lowest resolution), so the attention levels mirror.
    """
    attention = set(int(level) for level in attention_levels)
    down = tuple(DOWN_ATTN if level in attention else DOWN_PLAIN for level in range(num_levels))
    up = tuple(UP_ATTN if (num_levels - 1 - k) in attention else UP_PLAIN for k in range(num_levels))
    return down, up


def _preset(block_out_channels, layers_per_block, latent_channels, foundation_dim, sample_size,
            attention_levels) -> dict:
    down, up = block_types(len(block_out_channels), attention_levels)
    return dict(block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                latent_channels=latent_channels, foundation_dim=foundation_dim, sample_size=sample_size,
                down_block_types=down, up_block_types=up)


# Attention sits at the lowest-resolution level (16x16 for 256 px input with f16), as in the release.
VAVAE_PRESETS: dict[str, dict] = {
    # The released VA-VAE: ch 128, ch_mult (1,1,2,2,4), 2 res blocks per level (3 in the decoder), z 32.
    "f16d32": _preset((128, 128, 256, 256, 512), 2, 32, 1024, 256, attention_levels=(4,)),
    # Same layout at ch 32 (the official tiny reference checkpoint): f16, 64 px images -> 4x4 latents on CPU.
    "tiny": _preset((32, 32, 64, 64, 128), 2, 32, 1024, 64, attention_levels=(4,)),
    # Four levels (f8) at ch 32 for the CPU demo: 64 px images -> 8x8x32 latents, 1 res block per level.
    "tiny_f8": _preset((32, 64, 64, 128), 1, 32, 384, 64, attention_levels=(3,)),
    # Three levels (f4) at ch 32 for the CPU demo: 64 px images -> 16x16x16 latents. Each latent covers 4x4
    # pixels, so a few CPU epochs already keep the fine Doppler lines that tell people apart.
    "tiny_f4": _preset((32, 64, 128), 1, 16, 384, 64, attention_levels=(2,)),
    # Smallest sensible model for unit tests (f2, 4 latent channels).
    "test": _preset((32, 32), 1, 4, 16, 32, attention_levels=(1,)),
}


@dataclass
class VAVAEOutput(BaseOutput):
    """What :meth:`VAVAE.forward` returns (a diffusers BaseOutput: attribute, key or tuple access)."""

    reconstruction: torch.Tensor  # B x 3 x H x W, in the image range ([-1, 1]), no output squashing
    posterior: DiagonalGaussianDistribution  # logvar clamped to [-30, 20]
    latents: torch.Tensor  # B x latent_channels x h x w: posterior.sample() (or mode() on request)
    projected: torch.Tensor  # B x foundation_dim x h x w: linear_proj(latents), compared with DINOv2 features


class VAVAE(ModelMixin, ConfigMixin):
    """Vision-foundation-aligned KL autoencoder (LightningDiT's VA-VAE) in diffusers' AutoencoderKL layout."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = VAVAE_PRESETS["f16d32"]["down_block_types"],
        up_block_types: Sequence[str] = VAVAE_PRESETS["f16d32"]["up_block_types"],
        block_out_channels: Sequence[int] = (128, 128, 256, 256, 512),
        layers_per_block: int = 2,
        latent_channels: int = 32,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        foundation_dim: int = 1024,
        sample_size: int = 256,
        latents_mean: Optional[Sequence[float]] = None,
        latents_std: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        _validate_architecture(down_block_types, up_block_types, block_out_channels, norm_num_groups,
                               latent_channels, latents_mean, latents_std)
        # diffusers' Encoder/Decoder fix GroupNorm eps at 1e-6 and the LDM downsampling padding (0,1,0,1),
        # which is what the release uses. The decoder has layers_per_block + 1 res blocks per level.
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=tuple(down_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        # The alignment head: the VF loss compares linear_proj(z) with the foundation model's patch features.
        self.linear_proj = nn.Conv2d(latent_channels, foundation_dim, kernel_size=1, bias=False)

    # --------------------------------------------------------------------------------------- contract

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def encoder_levels(self) -> list[nn.Module]:
        """The encoder's resolution levels in input order (level 0 sees the full-resolution image)."""
        return list(self.encoder.down_blocks)

    @property
    def encoder_conv_out_weight(self) -> nn.Parameter:
        """Last encoder layer: the adaptive VF weight balances gradients on it."""
        return self.encoder.conv_out.weight

    @property
    def decoder_conv_out_weight(self) -> nn.Parameter:
        """Last decoder layer: the adaptive GAN weight balances gradients on it."""
        return self.decoder.conv_out.weight

    # --------------------------------------------------------------------------------------- forward

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Images in [-1, 1] -> posterior over latents."""
        moments = self.quant_conv(self.encoder(x))  # B x 3 x H x W -> B x 2z x H/f x W/f
        return DiagonalGaussianDistribution(moments)  # splits mean/logvar, clamps logvar to [-30, 20]

    def encode_latents(self, x: torch.Tensor, sample: bool = True,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latents z (B x z x H/f x W/f): posterior.sample() like the release, or its mode when sample=False."""
        posterior = self.encode(x)
        return posterior.sample(generator=generator) if sample else posterior.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B x 3 x H x W), unclamped."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample: bool = True, generator: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None) -> VAVAEOutput:
        """``noise``: the posterior sample's ε (B x z x h x w), drawn by the caller, e.g. so that a batch split
        over DDP processes gets the noise the whole batch would get in one process; else ``generator`` draws it."""
        posterior = self.encode(x)
        if sample and noise is not None:
            if noise.shape != posterior.mean.shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, the posterior {tuple(posterior.mean.shape)}")
            latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)  # B x z x h x w
        else:
            latents = posterior.sample(generator=generator) if sample else posterior.mode()  # B x z x h x w
        reconstruction = self.decode(latents)  # B x 3 x H x W
        projected = self.linear_proj(latents)  # B x foundation_dim x h x w
        return VAVAEOutput(reconstruction=reconstruction, posterior=posterior, latents=latents,
                           projected=projected)

    # --------------------------------------------------------------------------------------- latent stats

    def set_latent_stats(self, mean, std) -> None:
        """Store per-channel latent statistics in the config (saved with save_pretrained)."""
        mean_list, std_list = _channel_list(mean), _channel_list(std)
        _validate_architecture(self.config.down_block_types, self.config.up_block_types,
                               self.config.block_out_channels, self.config.norm_num_groups,
                               self.config.latent_channels, mean_list, std_list)
        self.register_to_config(latents_mean=mean_list, latents_std=std_list)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.latents_mean is None or self.config.latents_std is None:
            raise ValueError("This VA-VAE has no latent statistics (config latents_mean/latents_std). Compute "
                             "them on the training latents and call set_latent_stats(mean, std) first.")
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(self.config.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    # --------------------------------------------------------------------------------------- interop

    def as_autoencoder_kl(self):
        """A plain diffusers AutoencoderKL with these weights (without the alignment head)."""
        from diffusers import AutoencoderKL

        cfg = self.config
        vae = AutoencoderKL(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            act_fn=cfg.act_fn, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
            sample_size=cfg.sample_size, mid_block_add_attention=cfg.mid_block_add_attention,
            latents_mean=cfg.latents_mean, latents_std=cfg.latents_std,
        )
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("linear_proj.")}
        load_state_dict_checked(vae, state, source="VAVAE -> diffusers AutoencoderKL")
        return vae.to(device=self.device, dtype=self.dtype)

    def to_ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the released LDM key names (usable by the official LightningDiT code)."""
        num_levels = len(self.config.block_out_channels)
        out = {}
        for key, value in self.state_dict().items():
            ldm_key = ours_key_to_ldm(key, num_levels)
            if ldm_key is None:
                raise KeyMismatchError(f"No LDM name for parameter {key}: the key table is incomplete.")
            out[ldm_key] = _to_ldm_shape(ldm_key, value)
        return out

    def num_parameters_split(self) -> dict[str, int]:
        """Parameter counts: autoencoder alone, alignment head, total."""
        head = sum(p.numel() for p in self.linear_proj.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"autoencoder": total - head, "linear_proj": head, "total": total}


def _channel_list(values) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().flatten().cpu().tolist()]
    return [float(v) for v in values]


def _validate_architecture(down_block_types, up_block_types, block_out_channels, norm_num_groups,
                           latent_channels, latents_mean, latents_std) -> None:
    levels = len(block_out_channels)
    if len(down_block_types) != levels or len(up_block_types) != levels:
        raise ValueError(f"VAVAE config: {len(down_block_types)} down blocks, {len(up_block_types)} up blocks and "
                         f"{levels} block_out_channels; all three must have one entry per level.")
    bad = [t for t in down_block_types if t not in (DOWN_PLAIN, DOWN_ATTN)]
    bad += [t for t in up_block_types if t not in (UP_PLAIN, UP_ATTN)]
    if bad:
        raise ValueError(f"VAVAE config: unsupported block types {bad}; use {DOWN_PLAIN}/{DOWN_ATTN} and "
                         f"{UP_PLAIN}/{UP_ATTN}.")
    odd = [c for c in block_out_channels if c % norm_num_groups]
    if odd:
        raise ValueError(f"VAVAE config: channels {odd} are not divisible by norm_num_groups={norm_num_groups}.")
    for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
        if stats is not None and len(stats) != latent_channels:
            raise ValueError(f"VAVAE config: {name} has {len(stats)} values, latent_channels is {latent_channels}.")


def create_vavae(name_or_config: Union[str, Mapping[str, Any]] = "f16d32", **overrides) -> VAVAE:
    """A randomly initialised VA-VAE from a preset name (see VAVAE_PRESETS) or a config dict, plus overrides."""
    if isinstance(name_or_config, str):
        if name_or_config not in VAVAE_PRESETS:
            raise KeyError(f"Unknown VA-VAE preset '{name_or_config}'. Presets: {', '.join(VAVAE_PRESETS)}.")
        config = dict(VAVAE_PRESETS[name_or_config])
    else:
        config = dict(name_or_config)
    config.update(overrides)
    return VAVAE(**_constructor_kwargs(config, source="create_vavae"))


def _constructor_kwargs(config: Mapping[str, Any], source: str) -> dict:
    """Keep the VAVAE arguments of a config dict; diffusers bookkeeping (_class_name, ...) is dropped."""
    allowed = set(inspect.signature(VAVAE.__init__).parameters) - {"self"}
    unknown = [k for k in config if k not in allowed and not str(k).startswith("_")]
    if unknown:
        raise ValueError(f"{source}: config keys {unknown} are not VAVAE arguments (allowed: {sorted(allowed)}).")
    return {k: v for k, v in config.items() if k in allowed}


# =========================================================================================== LDM key table
#
# One rule per family of keys: (released LDM name, our name). Placeholders:
#   {m} encoder|decoder   {p} weight|bias   {i},{j} level / block index   {ri} our reversed decoder level
#   {r} res-block part (LDM nin_shortcut = our conv_shortcut)   {a} attention part   {n} mid res block 1|2
# The LDM decoder stores its up levels by resolution (up.0 = full resolution), diffusers in execution order
# (up_blocks.0 = lowest resolution): {ri} = num_levels - 1 - {i}.

LDM_KEY_RULES: tuple[tuple[str, str], ...] = (
    ("{m}.conv_in.{p}", "{m}.conv_in.{p}"),
    ("{m}.conv_out.{p}", "{m}.conv_out.{p}"),
    ("{m}.norm_out.{p}", "{m}.conv_norm_out.{p}"),
    ("{m}.mid.block_{n}.{r}.{p}", "{m}.mid_block.resnets.{n}.{r}.{p}"),
    ("{m}.mid.attn_1.{a}.{p}", "{m}.mid_block.attentions.0.{a}.{p}"),
    ("encoder.down.{i}.block.{j}.{r}.{p}", "encoder.down_blocks.{i}.resnets.{j}.{r}.{p}"),
    ("encoder.down.{i}.attn.{j}.{a}.{p}", "encoder.down_blocks.{i}.attentions.{j}.{a}.{p}"),
    ("encoder.down.{i}.downsample.conv.{p}", "encoder.down_blocks.{i}.downsamplers.0.conv.{p}"),
    ("decoder.up.{i}.block.{j}.{r}.{p}", "decoder.up_blocks.{ri}.resnets.{j}.{r}.{p}"),
    ("decoder.up.{i}.attn.{j}.{a}.{p}", "decoder.up_blocks.{ri}.attentions.{j}.{a}.{p}"),
    ("decoder.up.{i}.upsample.conv.{p}", "decoder.up_blocks.{ri}.upsamplers.0.conv.{p}"),
    ("quant_conv.{p}", "quant_conv.{p}"),
    ("post_quant_conv.{p}", "post_quant_conv.{p}"),
    ("linear_proj.weight", "linear_proj.weight"),
)

# Word placeholders: LDM value -> our value.
_WORDS = {
    "m": {"encoder": "encoder", "decoder": "decoder"},
    "p": {"weight": "weight", "bias": "bias"},
    "r": {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"},
    "a": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
    "n": {"1": "0", "2": "1"},
}
_NUMBERS = ("i", "j", "ri")
# LDM attention projections are 1x1 convs ([C, C, 1, 1]); diffusers uses Linear layers ([C, C]).
_LDM_ATTENTION_PROJECTION = re.compile(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.weight$")

# Keys of the released training checkpoint that are not part of the VA-VAE.
# The first matching prefix gives the reason, so the discriminator comes before the rest of the loss.
LDM_DROPPED_PREFIXES = {
    "foundation_model.": "frozen DINOv2 copy saved by the official trainer (models.foundation loads DINOv2 itself)",
    "loss.discriminator.": "PatchGAN discriminator of the official training loss, not part of the VA-VAE (stage 1 "
                           "loads it into its discriminator: vae_training.builders.init_discriminator)",
    "loss.": "state of the official training loss (LPIPS net, logvar), not part of the VA-VAE",
}
# Top-level groups that may sit beside the VA-VAE in a Lightning checkpoint (ours or the official trainer's).
NON_VAE_PREFIXES = {
    **LDM_DROPPED_PREFIXES,
    "discriminator.": "GAN discriminator of the fine-tuning module (loaded separately by the trainer)",
    "perceptual.": "LPIPS network of the fine-tuning module",
    "lpips.": "LPIPS network of the fine-tuning module",
}


def _template_regex(template: str, side: str) -> re.Pattern:
    pattern, pos = "", 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[pos:match.start()])
        name = match.group(1)
        if name in _WORDS:
            words = _WORDS[name].keys() if side == "ldm" else _WORDS[name].values()
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            pattern += f"(?P<{name}>{alternatives})"
        elif name in _NUMBERS:
            pattern += f"(?P<{name}>\\d+)"
        else:
            raise ValueError(f"Unknown placeholder {{{name}}} in key rule {template}")
        pos = match.end()
    return re.compile("^" + pattern + re.escape(template[pos:]) + "$")


_COMPILED_RULES = [(_template_regex(ldm, "ldm"), ldm, _template_regex(ours, "ours"), ours)
                   for ldm, ours in LDM_KEY_RULES]


def ldm_key_to_ours(key: str, num_levels: int) -> Optional[str]:
    """Our (diffusers) name of a released LDM key, or None when no rule covers it."""
    for ldm_re, _, _, ours_template in _COMPILED_RULES:
        match = ldm_re.match(key)
        if match:
            values = match.groupdict()
            for name, words in _WORDS.items():
                if name in values:
                    values[name] = words[values[name]]
            if "{ri}" in ours_template:
                values["ri"] = str(num_levels - 1 - int(values["i"]))
            return ours_template.format(**values)
    return None


def ours_key_to_ldm(key: str, num_levels: int) -> Optional[str]:
    """The released LDM name of one of our keys, or None when no rule covers it."""
    for _, ldm_template, ours_re, _ in _COMPILED_RULES:
        match = ours_re.match(key)
        if match:
            values = match.groupdict()
            for name, words in _WORDS.items():
                if name in values:
                    values[name] = {v: k for k, v in words.items()}[values[name]]
            if "ri" in values:
                values["i"] = str(num_levels - 1 - int(values.pop("ri")))
            return ldm_template.format(**values)
    return None


def _to_ldm_shape(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    if _LDM_ATTENTION_PROJECTION.search(ldm_key) and value.ndim == 2:
        return value[:, :, None, None]
    return value


def _from_ldm_shape(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    if _LDM_ATTENTION_PROJECTION.search(ldm_key) and value.ndim == 4:
        if value.shape[2:] != (1, 1):
            raise KeyMismatchError(f"{ldm_key}: attention projection with kernel {tuple(value.shape[2:])}, "
                                   f"expected a 1x1 conv.")
        return value[:, :, 0, 0]
    return value


def detect_layout(state_dict: Mapping[str, Any]) -> Optional[str]:
    """'ldm' (released key names), 'diffusers' (ours) or None (no VA-VAE encoder found)."""
    keys = list(state_dict)
    if any(k.startswith(("encoder.down.", "encoder.mid.block_", "decoder.up.")) for k in keys):
        return "ldm"
    if any(k.startswith(("encoder.down_blocks.", "encoder.mid_block.", "decoder.up_blocks.")) for k in keys):
        return "diffusers"
    return None


def split_ldm_state_dict(state_dict: Mapping[str, torch.Tensor], num_levels: int):
    """Rename released LDM keys to ours: (converted, ignored {reason: keys}, unconvertible keys)."""
    converted: dict[str, torch.Tensor] = {}
    ignored: dict[str, list] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        dropped = next((p for p in LDM_DROPPED_PREFIXES if key.startswith(p)), None)
        if dropped is not None:
            ignored.setdefault(LDM_DROPPED_PREFIXES[dropped], []).append(key)
            continue
        ours = ldm_key_to_ours(key, num_levels)
        if ours is None:
            unexpected.append(key)
            continue
        converted[ours] = _from_ldm_shape(key, value)
    return converted, ignored, unexpected


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: VAVAE) -> dict[str, torch.Tensor]:
    """Released LDM-format VA-VAE weights -> our state_dict for ``model`` (timm-style filter function).

    Drops the official trainer's ``foundation_model.*`` and ``loss.*`` entries (reported), renames everything
    else through :data:`LDM_KEY_RULES`, turns the 1x1-conv attention projections into linear weights, and
    raises :class:`KeyMismatchError` if any key is left over or any model parameter is not provided.
    A state_dict already in our layout is returned as is.
    """
    if detect_layout(state_dict) == "diffusers":
        return dict(state_dict)
    num_levels = len(model.config.block_out_channels)
    converted, ignored, unexpected = split_ldm_state_dict(state_dict, num_levels)
    expected = set(model.state_dict())
    unexpected += [k for k in converted if k not in expected]
    missing = sorted(expected - set(converted))
    report_key_mismatch(missing, unexpected, source="LDM -> VAVAE key mapping", loaded=len(converted),
                        ignored=ignored, hint=_ARCH_HINT)
    return {k: v for k, v in converted.items() if k in expected}


_ARCH_HINT = ("The checkpoint's architecture does not match the model it is loaded into. load_vavae() infers the "
              "architecture from the weights; if you built the model yourself, use the checkpoint's config.")


# =========================================================================================== architecture inference


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def infer_config_from_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """VAVAE constructor arguments read off the shapes of released-format (LDM) weights."""
    keys = [k for k in state_dict if not k.startswith(tuple(LDM_DROPPED_PREFIXES))]

    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise KeyMismatchError(f"Cannot infer the VA-VAE architecture: key '{key}' is missing. Keys present: "
                                   f"{summarize_keys(keys)}")
        return state_dict[key]

    levels = _indices(keys, r"^encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise KeyMismatchError(f"Cannot infer the VA-VAE architecture: encoder levels {levels} are not 0..N-1.")
    channels = [int(need(f"encoder.down.{i}.block.0.conv1.weight").shape[0]) for i in levels]
    blocks = {i: _indices(keys, rf"^encoder\.down\.{i}\.block\.(\d+)\.") for i in levels}
    counts = {len(b) for b in blocks.values()}
    if len(counts) != 1:
        raise KeyMismatchError(f"Encoder levels have different numbers of res blocks {blocks}; the diffusers "
                               f"layout needs the same number at every level.")
    layers_per_block = counts.pop()
    decoder_levels = _indices(keys, r"^decoder\.up\.(\d+)\.")
    if decoder_levels != levels:
        raise KeyMismatchError(f"Decoder levels {decoder_levels} differ from encoder levels {levels}.")
    for i in levels:
        dec_blocks = _indices(keys, rf"^decoder\.up\.{i}\.block\.(\d+)\.")
        if len(dec_blocks) != layers_per_block + 1:
            raise KeyMismatchError(f"Decoder level {i} has {len(dec_blocks)} res blocks; with {layers_per_block} "
                                   f"per encoder level the diffusers layout needs {layers_per_block + 1}.")
        dec_out = int(need(f"decoder.up.{i}.block.0.conv2.weight").shape[0])
        if dec_out != channels[i]:
            raise KeyMismatchError(f"Decoder level {i} has {dec_out} channels, encoder level {i} has {channels[i]}.")
    encoder_attention = [i for i in levels if any(k.startswith(f"encoder.down.{i}.attn.") for k in keys)]
    decoder_attention = [i for i in levels if any(k.startswith(f"decoder.up.{i}.attn.") for k in keys)]
    down = tuple(DOWN_ATTN if i in encoder_attention else DOWN_PLAIN for i in levels)
    up = tuple(UP_ATTN if (len(levels) - 1 - k) in decoder_attention else UP_PLAIN for k in levels)
    encoder_mid_attention = any(k.startswith("encoder.mid.attn_1.") for k in keys)
    decoder_mid_attention = any(k.startswith("decoder.mid.attn_1.") for k in keys)
    if encoder_mid_attention != decoder_mid_attention:
        raise KeyMismatchError("Mid-block attention present in only one of encoder/decoder; not representable.")

    z = int(need("decoder.conv_in.weight").shape[1])
    moments = int(need("encoder.conv_out.weight").shape[0])
    if moments != 2 * z:
        raise KeyMismatchError(f"encoder.conv_out gives {moments} channels, expected 2 x z_channels = {2 * z} "
                               f"(a KL autoencoder with double_z).")
    quant = need("quant_conv.weight")
    post_quant = need("post_quant_conv.weight")
    if tuple(quant.shape[:2]) != (2 * z, 2 * z) or tuple(post_quant.shape[:2]) != (z, z):
        raise KeyMismatchError(f"quant_conv {tuple(quant.shape)} / post_quant_conv {tuple(post_quant.shape)}: only "
                               f"embed_dim == z_channels ({z}) is supported.")
    return dict(
        in_channels=int(need("encoder.conv_in.weight").shape[1]),
        out_channels=int(need("decoder.conv_out.weight").shape[0]),
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        latent_channels=z,
        mid_block_add_attention=encoder_mid_attention,
        foundation_dim=int(need("linear_proj.weight").shape[0]),
    )


def infer_config_from_weights(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Constructor arguments from weights in either layout (ours is renamed to LDM names first)."""
    layout = detect_layout(state_dict)
    if layout == "ldm":
        return infer_config_from_ldm(state_dict)
    if layout == "diffusers":
        num_levels = len(_indices(state_dict, r"^decoder\.up_blocks\.(\d+)\."))
        renamed = {}
        for key, value in state_dict.items():
            ldm = ours_key_to_ldm(key, num_levels)
            if ldm is None:
                raise KeyMismatchError(f"Unexpected key '{key}' in a VA-VAE state_dict (diffusers layout).")
            renamed[ldm] = value
        return infer_config_from_ldm(renamed)
    raise KeyMismatchError(f"No VA-VAE weights recognised (keys: {summarize_keys(state_dict)}).")


# =========================================================================================== loading


def _select_prefix(state_dict: Mapping[str, torch.Tensor], prefix: Optional[str], source: str):
    """The sub-dict under the VA-VAE's prefix and the keys outside it, grouped by reason (explained)."""
    anchor = "encoder.conv_in.weight"
    if prefix is None:
        candidates = sorted({k[: -len(anchor)] for k in state_dict if k.endswith(anchor)})
        if not candidates:
            raise KeyMismatchError(f"{source}: no VA-VAE weights found (no '*encoder.conv_in.weight' key). Top-level "
                                   f"groups: {summarize_keys(state_dict, depth=1)}.")
        if len(candidates) > 1:
            raise KeyMismatchError(f"{source}: several VA-VAE weight sets under prefixes {candidates}; pass "
                                   f"prefix=... (e.g. load_vavae(path, prefix='{candidates[0]}')) to choose one.")
        prefix, explicit = candidates[0], False
    else:
        explicit = True
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not inside:
        raise KeyMismatchError(f"{source}: no keys start with prefix '{prefix}'.")
    ignored: dict[str, list] = {}
    unexplained: list[str] = []
    for key in state_dict:
        if key.startswith(prefix):
            continue
        reason = next((r for p, r in NON_VAE_PREFIXES.items() if key.startswith(p)), None)
        if reason is None and explicit:
            reason = f"outside the selected prefix '{prefix}'"
        if reason is None:
            unexplained.append(key)
        else:
            ignored.setdefault(reason, []).append(key)
    if unexplained:
        raise KeyMismatchError(f"{source}: VA-VAE weights found under prefix '{prefix}', but these keys are neither "
                               f"VA-VAE weights nor a known companion (discriminator, loss, foundation model): "
                               f"{summarize_keys(unexplained)}. Pass prefix='{prefix}' to load the VA-VAE and ignore "
                               f"them explicitly.")
    return prefix, inside, ignored


def _config_from_checkpoint(content: Mapping[str, Any]) -> Optional[dict]:
    """The VAVAE config our trainer stores in its Lightning checkpoints, if any."""
    if isinstance(content.get("vavae_config"), Mapping):
        return dict(content["vavae_config"])
    hyper = content.get("hyper_parameters")
    if isinstance(hyper, Mapping):
        for key in ("vavae_config", "vae_config"):
            if isinstance(hyper.get(key), Mapping):
                return dict(hyper[key])
    return None


def load_vavae_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: str, prefix: Optional[str] = None,
                          config: Optional[Mapping[str, Any]] = None,
                          latent_stats: Optional[tuple] = None) -> VAVAE:
    """Build a VAVAE for ``state_dict`` (any supported layout/prefix) and load it; every key is accounted for."""
    chosen, inside, outside_ignored = _select_prefix(state_dict, prefix, source)
    layout = detect_layout(inside)
    if layout is None:
        raise KeyMismatchError(f"{source}: keys under prefix '{chosen}' are not VA-VAE weights.")
    if config is not None:
        kwargs = _constructor_kwargs(config, source=f"{source} (stored config)")
        how = "stored config"
    else:
        kwargs = infer_config_from_weights({k: v for k, v in inside.items()
                                            if not k.startswith(tuple(LDM_DROPPED_PREFIXES))})
        how = "inferred from weight shapes"
    if latent_stats is not None:
        kwargs["latents_mean"], kwargs["latents_std"] = (_channel_list(s) for s in latent_stats)
    model = VAVAE(**kwargs)
    ignored = dict(outside_ignored)
    if layout == "ldm":
        for key in inside:
            reason = next((r for p, r in LDM_DROPPED_PREFIXES.items() if key.startswith(p)), None)
            if reason is not None:
                ignored.setdefault(reason, []).append(chosen + key)
        try:
            inside = checkpoint_filter_fn(inside, model)  # renames; raises on any key it cannot explain
        except KeyMismatchError as exc:
            raise KeyMismatchError(f"{source} (architecture {how}):\n{exc}") from exc
    report = load_state_dict_checked(model, inside, source=f"{source} [{layout} layout, prefix '{chosen}', "
                                                            f"architecture {how}]", ignored=ignored, hint=_ARCH_HINT)
    model.load_report = report
    model.eval()
    return model


def _load_folder(folder: Path) -> VAVAE:
    config = VAVAE.load_config(str(folder))
    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        state = read_safetensors(weights)[0]
    elif (folder / "diffusion_pytorch_model.bin").is_file():
        weights = folder / "diffusion_pytorch_model.bin"
        state = load_torch_file(weights)
    else:
        raise FileNotFoundError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors (or .bin). "
                                f"Export the model again with save_pretrained().")
    model = VAVAE(**_constructor_kwargs(config, source=str(folder / "config.json")))
    model.load_report = load_state_dict_checked(model, state, source=str(weights))
    model.eval()
    return model


def load_vavae(path: PathLike, *, trust_pickle: bool = False, prefix: Optional[str] = None) -> VAVAE:
    """Load a VA-VAE from any of the supported files, in eval mode.

    * a folder written by ``save_pretrained`` (config.json + diffusion_pytorch_model.safetensors);
    * the released ``vavae-imagenet256-f16d32-dinov2.pt`` (LDM layout under ``state_dict``; pickled, so it
      needs ``trust_pickle=True`` — or its safetensors conversion by step2, which needs nothing);
    * a safetensors file in either layout (metadata may carry ``vavae_config`` and latent statistics);
    * a Lightning ``.ckpt`` of our trainer (``vae.*`` keys and a ``vavae_config`` entry) or of the official
      trainer (LDM keys at top level).

    ``prefix`` selects the VA-VAE's key prefix explicitly (e.g. 'vae.'); by default the one prefix under
    which an ``encoder.conv_in.weight`` exists is used. Without a stored config the architecture is inferred
    from the weight shapes. The key report is kept on ``model.load_report``.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _load_folder(path)
        raise FileNotFoundError(f"{path} is a folder without config.json; load_vavae expects a save_pretrained "
                                f"folder, or a .pt/.ckpt/.safetensors file.")
    if not path.exists():
        raise FileNotFoundError(f"VA-VAE checkpoint {path} does not exist. Run step2_download_models.py to fetch the "
                                f"released weights, or pass the path of your exported model.")
    config, stats = None, None
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
        if metadata.get("vavae_config"):
            config = json.loads(metadata["vavae_config"])
        if metadata.get("latents_mean") and metadata.get("latents_std"):
            stats = (json.loads(metadata["latents_mean"]), json.loads(metadata["latents_std"]))
    else:
        content = load_torch_file(path, trust_pickle=trust_pickle)
        if not isinstance(content, Mapping):
            raise ValueError(f"{path} holds a {type(content).__name__}, not a checkpoint dict.")
        if isinstance(content.get("state_dict"), Mapping):
            state = content["state_dict"]
        elif content and all(isinstance(v, torch.Tensor) for v in content.values()):
            state = content
        else:
            hint = (" It is a DiT checkpoint (train_conditional_dit.py), not a VA-VAE." if "dit_config" in content
                    else "")
            raise KeyMismatchError(f"{path}: no 'state_dict' entry and not a plain state_dict (top-level keys: "
                                   f"{sorted(content)[:20]}).{hint} Pass the released VA-VAE (step2), a step4 "
                                   f"checkpoint (.ckpt) or a step5 export folder.")
        config = _config_from_checkpoint(content)
    return load_vavae_state_dict(state, source=str(path), prefix=prefix, config=config, latent_stats=stats)


def save_ldm_safetensors(model: VAVAE, path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Our weights under the released LDM names, as safetensors (config and latent stats in the metadata)."""
    meta = {"format": "ldm-vavae", "vavae_config": json.dumps(_json_config(model))}
    if model.config.latents_mean is not None:
        meta["latents_mean"] = json.dumps(list(model.config.latents_mean))
        meta["latents_std"] = json.dumps(list(model.config.latents_std))
    meta.update(metadata or {})
    return save_safetensors(model.to_ldm_state_dict(), path, meta)


def _json_config(model: VAVAE) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
            if not k.startswith("_")}


__all__ = [
    "VAVAE", "VAVAEOutput", "VAVAE_PRESETS", "create_vavae", "load_vavae", "load_vavae_state_dict",
    "checkpoint_filter_fn", "ldm_key_to_ours", "ours_key_to_ldm", "infer_config_from_weights",
    "infer_config_from_ldm", "detect_layout", "save_ldm_safetensors", "block_types", "LDM_KEY_RULES",
    "LDM_DROPPED_PREFIXES",
]
