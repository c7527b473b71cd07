"""LightningDiT: a diffusion transformer on VA-VAE latents, conditioned on the person and the walking condition.

Architecture (DESIGN.md section 3, the released LightningDiT): patch embedding, fixed 2-D sin-cos position
embedding plus 2-D rotary embedding in attention, SwiGLU MLP, RMSNorm, optional qk-norm, adaLN-Zero blocks and
a modulated final layer; timesteps t in [0, 1] (0 = noise, 1 = data). The parameter and buffer names are those of
the released checkpoints (``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.N.mlp.w12`` ...), so the
released weights load directly; :func:`checkpoint_filter_fn` only strips wrapper prefixes and checks the fixed
tables.

What we add: a second label table, ``condition_embedder`` (walking condition), summed into the conditioning
vector like the person table ``y_embedder``. Each table has its own null row at index = its number of classes,
each label is dropped independently during training, so classifier-free guidance can be applied to the person,
the condition or both; guidance acts on every latent channel (the reference guided only channels [:3]).

Entry points: :data:`DIT_PRESETS` + :func:`create_dit` (new models), :func:`load_dit` (released ``.pt``, our
checkpoints, ``save_pretrained`` folders), :func:`adapt_class_embedding` (released ImageNet model -> person
model for fine-tuning).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from timm.layers import Mlp, PatchEmbed

from models.checkpoints import (
    KeyMismatchError,
    load_state_dict_checked,
    load_state_file,
    load_torch_file,
    read_safetensors,
)
from models.transport import apply_cfg

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# ----------------------------------------------------------------------------------------------- presets

# Architecture only (depth, width, heads, patch); everything else comes from LightningDiT's defaults, which are
# the released settings (SwiGLU, RoPE, RMSNorm on; qk-norm off). B/L/XL as in the reference; S is our users'
# working size; "tiny" is the official tiny reference checkpoint's shape; "tiny/2" is the CPU demo's model
# (16x16 latents -> 64 tokens) and "mini" a wider CPU model.
DIT_PRESETS: dict[str, dict] = {
    "S/1": dict(depth=12, hidden_size=384, num_heads=6, patch_size=1),
    "S/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "B/1": dict(depth=12, hidden_size=768, num_heads=12, patch_size=1),
    "B/2": dict(depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "L/1": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=1),
    "L/2": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "XL/1": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=1),
    "XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    "mini": dict(depth=6, hidden_size=256, num_heads=4, patch_size=1),
    "tiny": dict(depth=2, hidden_size=128, num_heads=4, patch_size=1),
    "tiny/2": dict(depth=2, hidden_size=128, num_heads=4, patch_size=2),
}

# Fixed tables: derived from the config, stored in the released files (pos_embed as a frozen parameter).
FIXED_TABLE_KEYS = ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin")
# Prefixes that training wrappers add (DDP, torch.compile); the weights under them are the model's.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def preset_name(name: str) -> str:
    """'LightningDiT-XL/1', 'xl/1', 'XL_1' -> 'XL/1'; raises for unknown names."""
    key = name.strip()
    if key.lower().startswith("lightningdit-"):
        key = key[len("lightningdit-"):]
    key = key.replace("_", "/")
    for candidate in DIT_PRESETS:
        if candidate.lower() == key.lower():
            return candidate
    raise ValueError(f"Unknown DiT preset '{name}'. Known presets: {', '.join(DIT_PRESETS)}.")


# ----------------------------------------------------------------------------------------------- fixed tables


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[sin(p·ω_k), cos(p·ω_k)] with ω_k = 10000^(-k / (embed_dim/2)); positions (M,) -> (M, embed_dim), float64."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even size, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]  # M x D/2
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed position embedding of a grid_size² token grid (row-major), grid_size² x embed_dim.

    First half encodes the column, second half the row: the released pos_embed's order.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a size divisible by 4, got {embed_dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)


def rope_2d_tables(head_dim: int, grid_size: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (grid_size² x head_dim) of 2-D rotary embedding: half the head for rows, half for columns.

    Frequencies come in interleaved pairs (the rotation acts on channel pairs 2i, 2i+1).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head size divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2).float() / axis_dim)  # axis_dim/2
    angles = torch.arange(grid_size).float()[:, None] * freqs[None]  # S x axis_dim/2
    angles = angles.repeat_interleave(2, dim=-1)  # S x axis_dim, pairs share a frequency
    row = angles[:, None, :].expand(grid_size, grid_size, axis_dim)
    col = angles[None, :, :].expand(grid_size, grid_size, axis_dim)
    table = torch.cat([row, col], dim=-1).reshape(grid_size * grid_size, head_dim)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the 90° rotation of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (stable under bf16/fp16), learnable scale ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """silu(x W1) * (x W2) -> W3; W1 and W2 share one linear ``w12`` (the released layout)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class RotaryEmbedding2D(nn.Module):
    """Applies fixed 2-D RoPE to queries/keys (B x heads x N x head_dim). Tables are saved (released names)."""

    def __init__(self, head_dim: int, grid_size: int):
        super().__init__()
        cos, sin = rope_2d_tables(head_dim, grid_size)
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.freqs_cos + rotate_pairs(x) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[RotaryEmbedding2D]) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x N x head_dim
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)  # B x heads x N x head_dim
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


def modulate(x: torch.Tensor, shift: Optional[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """x: B x N x D; shift/scale: B x D (adaLN)."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, both modulated and gated by the conditioning vector (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, use_qknorm: bool, use_swiglu: bool,
                 use_rmsnorm: bool, wo_shift: bool):
        super().__init__()
        make_norm = (lambda: RMSNorm(hidden_size)) if use_rmsnorm else \
            (lambda: nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
        self.norm1 = make_norm()
        self.attn = Attention(hidden_size, num_heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        self.norm2 = make_norm()
        mlp_hidden = int(hidden_size * mlp_ratio)
        if use_swiglu:
            # 2/3 of the plain MLP width keeps the parameter count of a GELU MLP (released layout).
            self.mlp = SwiGLU(hidden_size, int(2 / 3 * mlp_hidden))
        else:
            self.mlp = Mlp(hidden_size, mlp_hidden, act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Optional[RotaryEmbedding2D]) -> torch.Tensor:
        # x: B x N x D tokens, c: B x D conditioning
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size) if use_rmsnorm else \
            nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # B x N x p²·C_out


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features -> MLP. t is used as is: the reference does not rescale it (no ×1000)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[cos(t·f_k), sin(t·f_k)], f_k = max_period^(-k/half): B -> B x dim."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.sinusoidal(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Label table with a null row at index ``num_classes`` (the "no label" of classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float, name: str):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.name = name
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def null_labels(self, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), self.null_id, dtype=torch.long, device=device)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        # Label dropout happens ONLY in training mode (model.train()): it teaches the null row. In eval mode
        # (validation, sampling) labels are used as given; guidance asks for the null row explicitly.
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.null_id), labels)
        return self.embedding_table(labels)  # B x D


GUIDE_CHOICES = ("person", "condition", "both")


# ----------------------------------------------------------------------------------------------- the model


class LightningDiT(ModelMixin, ConfigMixin):
    """LightningDiT predicting the velocity x1 − x0 of the linear path, conditioned on person and condition.

    ``num_classes`` is the size of the person table (``y_embedder``, the released name; ImageNet's 1000 in the
    release). ``num_conditions`` is the size of the walking-condition table (0: no condition table, the
    released architecture). Both tables have one extra null row at index = their size.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 32,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        num_conditions: int = 0,
        class_dropout_prob: float = 0.1,
        condition_dropout_prob: float = 0.1,
        learn_sigma: bool = False,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        wo_shift: bool = False,
        frequency_embedding_size: int = 256,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if num_classes < 1 or num_conditions < 0:
            raise ValueError(f"num_classes must be >= 1 and num_conditions >= 0 (got {num_classes}, "
                             f"{num_conditions})")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grid_size = input_size // patch_size
        self.gradient_checkpointing = False  # switched by enable_gradient_checkpointing() (diffusers)

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob, name="person")
        self.condition_embedder = (LabelEmbedder(num_conditions, hidden_size, condition_dropout_prob,
                                                 name="condition") if num_conditions > 0 else None)
        # Fixed sin-cos table, saved under the released name (a frozen parameter there, a buffer here).
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid_size).float().unsqueeze(0))
        self.feat_rope = RotaryEmbedding2D(hidden_size // num_heads, self.grid_size) if use_rope else None
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    # --------------------------------------------------------------------------------------- init

    def initialize_weights(self) -> None:
        """The reference initialisation: xavier linears, N(0, 0.02) tables, adaLN-Zero and a zero output layer.

        With zero modulation and output the fresh model predicts velocity 0 everywhere.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        patch_weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))  # like a linear layer
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.condition_embedder is not None:
            nn.init.normal_(self.condition_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # --------------------------------------------------------------------------------------- labels

    @property
    def num_persons(self) -> int:
        return self.config.num_classes

    @property
    def person_null_id(self) -> int:
        return self.y_embedder.null_id

    @property
    def condition_null_id(self) -> Optional[int]:
        return None if self.condition_embedder is None else self.condition_embedder.null_id

    def _labels(self, labels, embedder: LabelEmbedder, batch: int, device) -> torch.Tensor:
        """Label ids as a LongTensor of length batch (None -> null); ids outside [0, null_id] are errors."""
        if labels is None:
            return embedder.null_labels(batch, device)
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() == 1 and batch > 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"{embedder.name} labels: got {labels.numel()} for a batch of {batch}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > embedder.null_id):
            raise ValueError(f"{embedder.name} ids must lie in [0, {embedder.num_classes - 1}] (or "
                             f"{embedder.null_id} = null), got min {int(labels.min())}, max {int(labels.max())}")
        return labels

    def conditioning(self, t, person, condition, batch: int, device) -> torch.Tensor:
        """c = emb(t) + emb(person) + emb(condition): B x D."""
        t = torch.as_tensor(t, device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        c = self.t_embedder(t) + self.y_embedder(self._labels(person, self.y_embedder, batch, device))
        if self.condition_embedder is not None:
            c = c + self.condition_embedder(self._labels(condition, self.condition_embedder, batch, device))
        elif condition is not None:
            raise ValueError("This DiT has no condition embedding (num_conditions=0) but a condition was given. "
                             "Create it with num_conditions > 0, or pass condition=None.")
        return c

    # --------------------------------------------------------------------------------------- forward

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x p²·C -> B x C x H x W."""
        p, s, c = self.config.patch_size, self.grid_size, self.out_channels
        x = x.reshape(x.shape[0], s, s, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, s * p, s * p)

    def compile_blocks(self, **options) -> "LightningDiT":
        """``torch.compile`` each transformer block and the final layer in place (what the official code does with
        its decorators): the elementwise work (RMSNorm, RoPE, modulation, SwiGLU) fuses into a few kernels. Same
        parameters and state-dict keys. Needs a working inductor backend: a C++ compiler on the CPU, Triton on
        the GPU (compute capability 7.0+: not a P100). The first steps pay the compilation."""
        for module in [*self.blocks, self.final_layer]:
            module.compile(**options)
        return self

    def forward(self, x: torch.Tensor, t, person=None, condition=None) -> torch.Tensor:
        """Velocity prediction.

        x: B x C x H x W latents on the path at time t; t: B (or a scalar) in [0, 1]; person: B ids in
        [0, num_classes] (None or num_classes = null); condition: B ids in [0, num_conditions] (None = null).
        Returns B x C x H x W (the first half of the output when learn_sigma).
        """
        batch = x.shape[0]
        c = self.conditioning(t, person, condition, batch, x.device).to(x.dtype)  # B x D
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # B x N x D, N = (H/p)·(W/p)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, c, self.feat_rope)
            else:
                h = block(h, c, self.feat_rope)
        out = self.unpatchify(self.final_layer(h, c))  # B x C_out x H x W
        if self.config.learn_sigma:
            out, _ = out.chunk(2, dim=1)
        return out

    def _unconditional_labels(self, person, condition, guide: str, batch: int, device):
        if guide not in GUIDE_CHOICES:
            raise ValueError(f"guide must be one of {GUIDE_CHOICES}, got '{guide}'")
        if guide == "condition" and self.condition_embedder is None:
            raise ValueError("guide='condition' needs a condition embedding (num_conditions > 0).")
        person_ids = self._labels(person, self.y_embedder, batch, device)
        uncond_person = self.y_embedder.null_labels(batch, device) if guide in ("person", "both") else person_ids
        if self.condition_embedder is None:
            return person_ids, None, uncond_person, None
        condition_ids = self._labels(condition, self.condition_embedder, batch, device)
        uncond_condition = (self.condition_embedder.null_labels(batch, device) if guide in ("condition", "both")
                            else condition_ids)
        return person_ids, condition_ids, uncond_person, uncond_condition

    def forward_cond_uncond(self, x: torch.Tensor, t, person=None, condition=None, guide: str = "both"):
        """Conditional and unconditional velocities in one batched pass (2B): returns (v_cond, v_uncond).

        guide chooses what the unconditional branch drops: "person", "condition" or "both" (null rows).
        """
        batch = x.shape[0]
        person_ids, condition_ids, uncond_person, uncond_condition = self._unconditional_labels(
            person, condition, guide, batch, x.device)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(batch)
        both_conditions = None if condition_ids is None else torch.cat([condition_ids, uncond_condition])
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([person_ids, uncond_person]),
                           both_conditions)  # 2B x C x H x W
        return out[:batch], out[batch:]

    def forward_with_cfg(self, x: torch.Tensor, t, person=None, condition=None, *, cfg_scale: float,
                         cfg_interval_start: float = 0.0, guide: str = "both") -> torch.Tensor:
        """Classifier-free guided velocity on ALL channels: v_u + s·(v_c − v_u) where t >= cfg_interval_start,
        the conditional v_c elsewhere (guidance near pure noise hurts). x: B x C x H x W, unbatched by the caller.
        cfg_scale <= 1: no guidance (the plain conditional velocity), as in the release.
        """
        if cfg_scale <= 1.0:  # the release's rule: a scale <= 1 means no guidance
            return self.forward(x, t, person, condition)
        v_cond, v_uncond = self.forward_cond_uncond(x, t, person, condition, guide)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return apply_cfg(v_cond, v_uncond, t, cfg_scale, cfg_interval_start)

    def velocity_fn(self, person=None, condition=None, guide: str = "both") -> Callable:
        """A callable for models.transport.sample_ode: fn(x, t) -> v, fn(x, t, with_uncond=True) -> (v_c, v_u)."""

        def fn(x: torch.Tensor, t: torch.Tensor, with_uncond: bool = False):
            if with_uncond:
                return self.forward_cond_uncond(x, t, person, condition, guide)
            return self.forward(x, t, person, condition)

        return fn


# ----------------------------------------------------------------------------------------------- creation


def create_dit(name: str = "XL/1", **overrides) -> LightningDiT:
    """A new LightningDiT of preset ``name`` ('S/2', 'XL/1', 'LightningDiT-B/1', 'tiny', ...) with overrides."""
    config = dict(DIT_PRESETS[preset_name(name)])
    config.update(overrides)
    return LightningDiT(**_check_kwargs(config, source=f"create_dit('{name}')"))


def _constructor_keys() -> set[str]:
    import inspect

    return {n for n in inspect.signature(LightningDiT.__init__).parameters if n != "self"}


def _check_kwargs(config: Mapping[str, Any], source: str) -> dict:
    """Constructor kwargs from a config mapping; diffusers bookkeeping ('_class_name' ...) is dropped."""
    kwargs = {k: v for k, v in config.items() if not str(k).startswith("_")}
    unknown = sorted(set(kwargs) - _constructor_keys())
    if unknown:
        raise ValueError(f"{source}: unknown DiT config keys {unknown}. Valid keys: {sorted(_constructor_keys())}.")
    return kwargs


# ----------------------------------------------------------------------------------------------- checkpoints


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's leading 'module.' and torch.compile's '_orig_mod.' from every key."""
    out = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith(WRAPPER_PREFIXES):
            new = new[len("module."):] if new.startswith("module.") else new[len("_orig_mod."):]
        new = new.replace("._orig_mod.", ".")
        if new in out:
            raise KeyMismatchError(f"Two checkpoint keys map to '{new}' after removing wrapper prefixes.")
        out[new] = value
    return out


def _filter_with_notes(state_dict: Mapping[str, torch.Tensor], model: LightningDiT):
    """The filtered state_dict and {reason: keys} for what was replaced on purpose."""
    state = strip_wrapper_prefixes(state_dict)
    own = model.state_dict()
    notes: dict[str, list] = {}
    for key in FIXED_TABLE_KEYS:
        if key not in own:
            continue  # a table the model lacks (e.g. RoPE off) stays in and is reported as unexpected
        stored = state.get(key)
        if stored is not None and stored.shape == own[key].shape:
            if not torch.allclose(stored.float(), own[key].float(), atol=1e-5):
                raise KeyMismatchError(
                    f"Checkpoint '{key}' differs from the fixed sin-cos/RoPE table this architecture uses "
                    f"(max diff {(stored.float() - own[key].float()).abs().max():.3g}); it was not trained with "
                    f"LightningDiT's fixed tables and cannot be loaded as one.")
        else:
            reason = ("fixed table recomputed for this latent grid" if stored is not None
                      else "fixed table absent from the file, computed from the config")
            notes.setdefault(reason, []).append(key)
        state[key] = own[key].clone()
    return state, notes


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: LightningDiT) -> dict[str, torch.Tensor]:
    """Released/own LightningDiT weights -> this model's state_dict names.

    The names are the released ones, so this only removes training-wrapper prefixes and takes the fixed
    sin-cos position table and RoPE tables from the model (checked equal to the file's when the grid is the
    same; recomputed when the latent grid differs). Anything else that does not fit is left for the key
    report to flag.
    """
    return _filter_with_notes(state_dict, model)[0]


def _block_indices(state: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})


def _infer_mlp_ratio_swiglu(hidden: int, swiglu_hidden: int) -> float:
    guess = swiglu_hidden * 1.5 / hidden
    for candidate in (round(guess), round(guess, 1), round(guess, 2), round(guess, 3), guess):
        if int(2 / 3 * int(hidden * candidate)) == swiglu_hidden:
            return float(candidate)
    raise KeyMismatchError(f"SwiGLU width {swiglu_hidden} matches no mlp_ratio for hidden size {hidden}.")


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Architecture from weight shapes (no stored config): sizes, table sizes and which features are present.

    num_heads comes from the RoPE table (head size) or the qk-norm weight; without either, from the preset
    with the same depth and width (pass num_heads= to load_dit to override). num_classes assumes the class table
    ends with a null row (trained with label dropout); load_dit_state_dict logs that assumption, and
    ``num_classes=<rows>`` reads a table without one.
    """
    state = strip_wrapper_prefixes(state_dict)

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise KeyMismatchError(f"Cannot infer the DiT architecture: '{key}' is missing (keys start with "
                                   f"{sorted(state)[:5]}). Is this a LightningDiT state_dict?")
        return state[key]

    patch_weight = need("x_embedder.proj.weight")  # D x C x p x p
    hidden, in_channels, patch = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    blocks = _block_indices(state)
    if not blocks or blocks != list(range(len(blocks))):
        raise KeyMismatchError(f"Block indices {blocks[:10]} are not 0..depth-1.")
    depth = len(blocks)
    out_rows = need("final_layer.linear.weight").shape[0]
    if out_rows not in (in_channels * patch * patch, 2 * in_channels * patch * patch):
        raise KeyMismatchError(f"final_layer.linear has {out_rows} outputs, which fits neither learn_sigma "
                               f"setting for {in_channels} channels and patch {patch}.")
    config: dict[str, Any] = dict(
        hidden_size=hidden, in_channels=in_channels, patch_size=patch, depth=depth,
        learn_sigma=out_rows == 2 * in_channels * patch * patch,
        num_classes=need("y_embedder.embedding_table.weight").shape[0] - 1,
        frequency_embedding_size=need("t_embedder.mlp.0.weight").shape[1],
        use_swiglu="blocks.0.mlp.w12.weight" in state,
        use_rmsnorm="blocks.0.norm1.weight" in state,
        use_qknorm="blocks.0.attn.q_norm.weight" in state,
        use_rope="feat_rope.freqs_cos" in state,
        wo_shift=need("blocks.0.adaLN_modulation.1.weight").shape[0] == 4 * hidden,
    )
    if "condition_embedder.embedding_table.weight" in state:
        config["num_conditions"] = state["condition_embedder.embedding_table.weight"].shape[0] - 1
    else:
        config["num_conditions"] = 0
    if config["use_swiglu"]:
        config["mlp_ratio"] = _infer_mlp_ratio_swiglu(hidden, need("blocks.0.mlp.w3.weight").shape[1])
    else:
        config["mlp_ratio"] = need("blocks.0.mlp.fc1.weight").shape[0] / hidden
    if "pos_embed" in state:
        tokens = state["pos_embed"].shape[-2]
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise KeyMismatchError(f"pos_embed has {tokens} tokens, not a square grid.")
        config["input_size"] = side * patch
    elif config["use_rope"]:
        side = math.isqrt(state["feat_rope.freqs_cos"].shape[0])
        config["input_size"] = side * patch
    else:
        raise KeyMismatchError("Cannot infer the latent size: neither pos_embed nor RoPE tables in the weights. "
                               "Pass input_size= to load_dit.")
    if config["use_rope"]:
        head_dim = state["feat_rope.freqs_cos"].shape[1]
        config["num_heads"] = hidden // head_dim
    elif config["use_qknorm"]:
        config["num_heads"] = hidden // state["blocks.0.attn.q_norm.weight"].shape[0]
    else:
        matches = [p for p in DIT_PRESETS.values() if p["hidden_size"] == hidden and p["depth"] == depth]
        if not matches:
            raise KeyMismatchError(f"Cannot infer num_heads for hidden size {hidden}, depth {depth} (no RoPE "
                                   f"or qk-norm weights, no matching preset). Pass num_heads= to load_dit.")
        config["num_heads"] = matches[0]["num_heads"]
        logger.info("num_heads=%d taken from the preset with hidden size %d and depth %d.", config["num_heads"],
                    hidden, depth)
    return config


def config_from_official_training_config(train_config: Mapping[str, Any]) -> dict:
    """The reference trainer's YAML dict (stored as checkpoint['config']) -> our constructor kwargs."""
    model_cfg = train_config["model"]
    config = dict(DIT_PRESETS[preset_name(str(model_cfg["model_type"]))])
    data = train_config.get("data") or {}
    downsample = (train_config.get("vae") or {}).get("downsample_ratio", 16)
    # Defaults as the reference's inference code applies them when a key is absent.
    config.update(
        input_size=int(data.get("image_size", 256)) // int(downsample),
        num_classes=int(data.get("num_classes", 1000)),
        in_channels=int(model_cfg.get("in_chans", 4)),
        use_qknorm=bool(model_cfg.get("use_qknorm", False)),
        use_swiglu=bool(model_cfg.get("use_swiglu", False)),
        use_rope=bool(model_cfg.get("use_rope", False)),
        use_rmsnorm=bool(model_cfg.get("use_rmsnorm", False)),
        wo_shift=bool(model_cfg.get("wo_shift", False)),
        learn_sigma=bool(model_cfg.get("learn_sigma", False)),
    )
    return config


def config_from_checkpoint(content: Mapping[str, Any], source: str) -> Optional[dict]:
    """Constructor kwargs stored in a checkpoint: 'dit_config' (ours), or 'config' as our flat DiT config,
    a training config with a 'model'/'dit' section holding it, or the reference trainer's YAML dict."""
    if isinstance(content.get("dit_config"), Mapping):
        return _check_kwargs(content["dit_config"], f"{source} ['dit_config']")
    config = content.get("config")
    if not isinstance(config, Mapping):
        return None
    if "hidden_size" in config and "depth" in config:
        return _check_kwargs(config, f"{source} ['config']")
    for section in ("dit", "model"):
        inner = config.get(section)
        if isinstance(inner, Mapping) and "hidden_size" in inner and "depth" in inner:
            return _check_kwargs(inner, f"{source} ['config']['{section}']")
    if isinstance(config.get("model"), Mapping) and "model_type" in config["model"]:
        return config_from_official_training_config(config)
    logger.info("%s: its 'config' entry holds no DiT architecture; inferring it from the weights.", source)
    return None


def _select_weights(content: Mapping[str, Any], use_ema: bool, source: str) -> tuple[dict, str]:
    """The DiT state_dict inside a checkpoint dict and a label saying which entry it came from."""
    entries = [k for k in ("ema", "model") if isinstance(content.get(k), Mapping)]
    if entries:
        entry = "ema" if (use_ema and "ema" in entries) else ("model" if "model" in entries else "ema")
        if use_ema and entry != "ema":
            logger.warning("%s has no 'ema' entry; loading 'model'.", source)
        return dict(content[entry]), entry
    if isinstance(content.get("state_dict"), Mapping):  # a Lightning checkpoint: find the DiT under a prefix
        state = content["state_dict"]
        prefixes = sorted({k[: -len("x_embedder.proj.weight")] for k in state if k.endswith("x_embedder.proj.weight")})
        if not prefixes:
            raise KeyMismatchError(f"{source}: its 'state_dict' holds no DiT weights (no '*x_embedder.proj.weight').")
        if len(prefixes) > 1:
            preferred = [p for p in prefixes if ("ema" in p) == use_ema]
            if len(preferred) != 1:
                raise KeyMismatchError(f"{source}: several DiT weight sets under prefixes {prefixes}; cannot choose.")
            prefixes = preferred
        prefix = prefixes[0]
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, f"state_dict/{prefix}"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return dict(content), "state_dict"
    raise KeyMismatchError(f"{source}: no 'ema'/'model'/'state_dict' entry and not a plain state_dict "
                           f"(top-level keys: {sorted(content)[:20]}).")


_LOAD_HINT = ("If the architecture was inferred or given wrongly, pass the right values to load_dit (e.g. "
              "num_heads=..., input_size=...). A person table of another size (the released 1001-row ImageNet "
              "table) is adapted with adapt_class_embedding() after loading the checkpoint as it is.")


PERSON_TABLE_KEY = "y_embedder.embedding_table.weight"


def _fit_person_table(state: dict, num_classes: int, source: str, *, assumed: bool) -> tuple[dict, dict]:
    """The person (class) table for a model of ``num_classes`` classes + a null row; {reason: keys} of what changed.

    The release's LabelEmbedder has the null row only when it was trained with label dropout
    (``class_dropout_prob > 0``): a table of exactly ``num_classes`` rows has none. Our model always has one, so a
    null row is added (the mean of the class rows: the "average class"); the class rows, hence every conditional
    prediction, are the checkpoint's. Guidance with that row is not something the checkpoint learned: fine-tune
    with label dropout before guiding. ``assumed``: the class count was inferred from the table (no stored config)
    by assuming a null row, which is said in the log.
    """
    table = state.get(PERSON_TABLE_KEY)
    if table is None:
        return state, {}
    rows = int(table.shape[0])
    if rows == num_classes + 1:
        if assumed:
            logger.info("%s: no stored config; the %d-row class table is taken as %d classes + the null row (the "
                        "release's layout with label dropout). A checkpoint trained without label dropout has no "
                        "null row: load it with num_classes=%d.", source, rows, num_classes, rows)
        return state, {}
    if rows != num_classes:
        return state, {}  # neither layout: the key report names the shape mismatch
    logger.warning("%s: the class table has %d rows for num_classes=%d, i.e. no null row (trained without label "
                   "dropout). Added one (the mean of the class rows) so the model has its usual layout; conditional "
                   "predictions are unchanged, but guidance (cfg_scale > 1) has no learned unconditional branch.",
                   source, rows, num_classes)
    state = dict(state)
    state[PERSON_TABLE_KEY] = torch.cat([table, table.float().mean(0, keepdim=True).to(table.dtype)])
    return state, {"no null row in the checkpoint: null row added (mean of the class rows)": [PERSON_TABLE_KEY]}


def load_dit_state_dict(state_dict: Mapping[str, torch.Tensor], *, source: str = "state_dict",
                        config: Optional[Mapping[str, Any]] = None, **config_overrides) -> LightningDiT:
    """Build a LightningDiT for ``state_dict`` (config given or inferred, then overridden) and load it checked."""
    state = strip_wrapper_prefixes(state_dict)
    if config is None:
        kwargs, how = infer_config_from_state_dict(state), "inferred from weight shapes"
    else:
        kwargs, how = _check_kwargs(config, source), "stored config"
    kwargs.update(_check_kwargs(config_overrides, f"{source} (overrides)"))
    assumed = config is None and "num_classes" not in config_overrides
    state, table_notes = _fit_person_table(state, int(kwargs.get("num_classes", 1000)), source, assumed=assumed)
    model = LightningDiT(**kwargs)
    filtered, notes = _filter_with_notes(state, model)
    notes.update(table_notes)
    model.load_report = load_state_dict_checked(model, filtered, source=f"{source} [architecture {how}]",
                                                ignored=notes, hint=_LOAD_HINT)
    model.eval()
    return model


def load_dit(path: PathLike, *, use_ema: bool = True, trust_pickle: bool = False,
             **config_overrides) -> LightningDiT:
    """Load a LightningDiT, in eval mode, from

    * a released/official checkpoint ``{'model', 'ema', 'opt', 'config'}`` (.pt; EMA weights unless
      ``use_ema=False``; the reference trainer's config is translated, or the architecture is inferred);
    * our checkpoints: the same dict with a 'dit_config' (or a DiT 'config'), a Lightning .ckpt holding the DiT
      under a prefix in 'state_dict', a plain state_dict, or a .safetensors file (metadata 'dit_config');
    * a ``save_pretrained`` folder.

    Files are read with ``torch.load(weights_only=True)``; a file that needs unpickling is refused unless
    ``trust_pickle=True``. ``config_overrides`` replace config values (e.g. ``class_dropout_prob=0.1``, or
    ``input_size`` for another latent grid). Every key is accounted for (report on ``model.load_report``);
    any unexplained missing/unexpected key raises :class:`models.checkpoints.KeyMismatchError`.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without config.json; load_dit expects a save_pretrained "
                                    f"folder or a .pt/.ckpt/.safetensors file.")
        config = LightningDiT.load_config(str(path))
        weights = path / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            state = read_safetensors(weights)[0]
        elif (path / "diffusion_pytorch_model.bin").is_file():
            weights = path / "diffusion_pytorch_model.bin"
            state = load_torch_file(weights, trust_pickle=trust_pickle)
        else:
            raise FileNotFoundError(f"{path} has a config.json but no diffusion_pytorch_model.safetensors (or "
                                    f".bin). Export the model again with save_pretrained().")
        return load_dit_state_dict(state, source=str(weights), config=config, **config_overrides)
    if not path.exists():
        raise FileNotFoundError(f"DiT checkpoint {path} does not exist. Download the released LightningDiT or "
                                f"pass the path of a checkpoint written by the DiT trainer.")
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
        config = json.loads(metadata["dit_config"]) if metadata.get("dit_config") else None
        return load_dit_state_dict(state, source=str(path), config=config, **config_overrides)
    content = load_state_file(path, trust_pickle=trust_pickle)
    state, entry = _select_weights(content, use_ema, str(path))
    config = config_from_checkpoint(content, str(path))
    return load_dit_state_dict(state, source=f"{path} ['{entry}']", config=config, **config_overrides)


def dit_config_dict(model: LightningDiT) -> dict:
    """The model's constructor kwargs as plain JSON types (for 'dit_config' in our checkpoints)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
            if not k.startswith("_")}


# ----------------------------------------------------------------------------------------------- fine-tuning


@torch.no_grad()
def adapt_class_embedding(model: LightningDiT, num_persons: int, num_conditions: int = 0, *,
                          person_init: str = "mean", noise_std: Optional[float] = None,
                          condition_init: str = "zero", seed: int = 0,
                          class_dropout_prob: Optional[float] = None,
                          condition_dropout_prob: Optional[float] = None) -> LightningDiT:
    """A copy of ``model`` (e.g. the released ImageNet XL) with a person table of ``num_persons`` rows + null and a
    condition table of ``num_conditions`` rows + null; every other weight is copied unchanged.

    Initialisation (why): the released class rows encode ImageNet classes, none of which is a person, so
    * person_init="mean": each person row = mean of the old class rows + N(0, noise_std²) noise. All persons
      start at the "average class" (a conditioning the released network knows how to use) and the noise breaks
      their symmetry; noise_std defaults to 0.1 × the element-wise std of the old class rows.
      person_init="normal": fresh N(0, 0.02²) rows (the from-scratch init).
    * the person null row = the released null row, so unconditional predictions (and guidance) start exactly as
      the released model's.
    * condition_init="zero": all condition rows (null included) zero, so the adapted model initially predicts
      exactly what it would without the condition table; the rows still get gradients and learn.
      condition_init="normal": N(0, 0.02²) rows.
    """
    if num_persons < 1 or num_conditions < 0:
        raise ValueError(f"num_persons must be >= 1 and num_conditions >= 0 (got {num_persons}, {num_conditions})")
    if person_init not in ("mean", "normal") or condition_init not in ("zero", "normal"):
        raise ValueError("person_init must be 'mean' or 'normal'; condition_init 'zero' or 'normal'.")
    config = dit_config_dict(model)
    config.update(num_classes=num_persons, num_conditions=num_conditions)
    if class_dropout_prob is not None:
        config["class_dropout_prob"] = class_dropout_prob
    if condition_dropout_prob is not None:
        config["condition_dropout_prob"] = condition_dropout_prob
    new = LightningDiT(**config)
    old_table = model.y_embedder.embedding_table.weight.float().cpu()  # (classes + 1) x D
    class_rows, null_row = old_table[:-1], old_table[-1]
    generator = torch.Generator().manual_seed(seed)
    hidden = old_table.shape[1]
    if person_init == "mean":
        std = float(class_rows.std()) * 0.1 if noise_std is None else float(noise_std)
        persons = class_rows.mean(0, keepdim=True) + std * torch.randn(num_persons, hidden, generator=generator)
    else:
        persons = 0.02 * torch.randn(num_persons, hidden, generator=generator)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("y_embedder.", "condition_embedder."))}
    state["y_embedder.embedding_table.weight"] = torch.cat([persons, null_row[None]])
    if num_conditions > 0:
        rows = torch.zeros(num_conditions + 1, hidden) if condition_init == "zero" else \
            0.02 * torch.randn(num_conditions + 1, hidden, generator=generator)
        state["condition_embedder.embedding_table.weight"] = rows
    dtype = model.y_embedder.embedding_table.weight.dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    new.load_report = load_state_dict_checked(new, state, source="adapt_class_embedding")
    new.to(device=model.device, dtype=model.dtype)
    new.train(model.training)
    logger.info("Adapted the class table: %d classes -> %d persons (+ %d conditions); person init '%s', "
                "condition init '%s'.", class_rows.shape[0], num_persons, num_conditions, person_init,
                condition_init)
    return new


def count_parameters(name: str, **overrides) -> int:
    """Parameter count of a preset, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_dit(name, **overrides)
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "LightningDiT", "DIT_PRESETS", "create_dit", "load_dit", "load_dit_state_dict", "checkpoint_filter_fn",
    "infer_config_from_state_dict", "config_from_official_training_config", "config_from_checkpoint",
    "adapt_class_embedding", "dit_config_dict", "strip_wrapper_prefixes", "count_parameters", "preset_name",
    "sincos_2d", "rope_2d_tables", "GUIDE_CHOICES",
]
