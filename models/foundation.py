"""The frozen vision foundation model the VA-VAE latents are aligned to (DINOv2 through timm), and a feature cache.

As in the release (DESIGN.md section 3): the [-1, 1] image is resized bilinearly so that the ViT's patch grid
equals the latent grid (input side = latent side x patch size, 16 x 14 = 224 for 256 px images with f16),
fed to DINOv2 without ImageNet normalisation (a switch turns it on), and the patch tokens after the final
norm (class/register tokens dropped) form a B x C x h x w feature map.

Weights: timm's pretrained weights (``vit_large_patch14_dinov2.lvd142m`` by default; any timm DINOv2 size),
a local checkpoint file (``checkpoint_path``: timm/Hugging Face ``model.safetensors``, Meta's original
``dinov2_vit*14_pretrain.pth``, ...), or random weights (``pretrained=False``, tests and demos). When pretrained
weights cannot be had offline, :class:`FoundationWeightsUnavailable` says which file to provide; choosing a
fallback is the caller's business.

:class:`FoundationFeatureCache` stores features per (manifest entry, flip, model identity, input size) in
memory and/or as safetensors shards on disk, so training computes DINOv2 once per fixed training image.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from microdoppler_finetune.utils.hub import hub_unreachable_reason
from models.checkpoints import KeyMismatchError, load_state_dict_checked, load_state_file

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

DEFAULT_FOUNDATION_MODEL = "vit_large_patch14_dinov2.lvd142m"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Standard timm DINOv2 trunks, keyed by (embed_dim, depth): lets a bare checkpoint file pick its architecture.
DINOV2_ARCHITECTURES = {
    (384, 12): "vit_small_patch14_dinov2",
    (768, 12): "vit_base_patch14_dinov2",
    (1024, 24): "vit_large_patch14_dinov2",
    (1536, 40): "vit_giant_patch14_dinov2",
}


class FoundationWeightsUnavailable(RuntimeError):
    """Pretrained foundation-model weights could not be loaded (typically: offline and not cached)."""


def split_model_name(name: str) -> tuple[str, Optional[str]]:
    """'hf-hub:timm/vit_large_patch14_dinov2.lvd142m' -> ('vit_large_patch14_dinov2', 'lvd142m')."""
    for prefix in ("hf-hub:timm/", "hf_hub:timm/", "timm/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def _grid(latent_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(latent_size, int):
        return latent_size, latent_size
    h, w = (int(v) for v in latent_size)
    return h, w


class FoundationModel(nn.Module):
    """A frozen timm ViT returning its patch-token grid at the latent resolution.

    Always in eval mode: the features must be a deterministic target, so dropout/drop-path stay off even
    when the surrounding training module calls ``train()`` (:meth:`train` is overridden for that).
    """

    def __init__(self, backbone: nn.Module, *, name: str, latent_size: Union[int, Sequence[int]] = 16,
                 imagenet_norm: bool = False, weights: str = "random",
                 token_grid: Optional[Union[int, Sequence[int]]] = None):
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.grid = _grid(latent_size)
        # The ViT's own token grid; None = the latent grid (the release). A coarser grid (a CPU demo's choice:
        # 8x8 tokens cost ~4x less than 16x16) gives features that are upsampled bilinearly to the latent grid.
        self.token_grid = _grid(token_grid) if token_grid else self.grid
        self.imagenet_norm = bool(imagenet_norm)
        self.weights = weights
        patch = backbone.patch_embed.patch_size
        self.patch_size = (int(patch[0]), int(patch[1])) if isinstance(patch, (tuple, list)) else (patch, patch)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: Optional[str] = None
        self.requires_grad_(False)
        super().train(False)

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.embed_dim)

    @property
    def input_size(self) -> tuple[int, int]:
        """Side lengths the image is resized to: token grid (the latent grid by default) x patch size."""
        return self.token_grid[0] * self.patch_size[0], self.token_grid[1] * self.patch_size[1]

    @property
    def pretrained_cfg(self) -> dict:
        """What this feature extractor expects and gives (in the spirit of timm's pretrained_cfg)."""
        arch, tag = split_model_name(self.name)
        return {
            "model_name": self.name,
            "architecture": arch,
            "tag": tag,
            "hf_hub_id": f"timm/{arch}.{tag}" if tag else None,
            "weights": self.weights,
            "feature_dim": self.feature_dim,
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "latent_size": self.grid,
            "token_grid": self.token_grid,
            "input_size": (3, *self.input_size),
            "input_size_rule": "input side = token grid side (default: latent side) x patch size; bilinear resize, "
                               "align_corners=False; features resized bilinearly to the latent grid when it differs",
            "input_range": (-1.0, 1.0),
            "imagenet_norm": self.imagenet_norm,
            "mean": IMAGENET_MEAN if self.imagenet_norm else None,
            "std": IMAGENET_STD if self.imagenet_norm else None,
            "output": "patch tokens after the final norm, prefix (class/register) tokens dropped, B x C x h x w",
        }

    @property
    def cache_identity(self) -> str:
        """Names these exact features: model, weights (fingerprint of the values), normalisation, input size."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in self.backbone.state_dict().items():
                flat = tensor.detach().flatten()
                sample = torch.cat([flat[:64], flat[-64:]]).float().cpu()
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(sample.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        h, w = self.input_size
        norm = "imagenet" if self.imagenet_norm else "none"
        identity = f"{self.name}|weights={self._fingerprint}|norm={norm}|input={h}x{w}"
        if self.token_grid != self.grid:  # the same tokens upsampled to another grid are other features
            identity += f"|grid={self.grid[0]}x{self.grid[1]}"
        return identity

    def train(self, mode: bool = True) -> "FoundationModel":
        # Frozen target: stays in eval whatever the caller asks (no dropout/drop-path, fixed features).
        return super().train(False)

    @torch.no_grad()  # a frozen target: never build a graph through a 300M-parameter ViT
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images B x 3 x H x W in [-1, 1] -> features B x C x h x w on the latent grid."""
        b = x.shape[0]
        h, w = self.token_grid
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)  # B x 3 x 14h x 14w
        if self.imagenet_norm:
            x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        tokens = self.backbone.forward_features(x)  # B x (prefix + h*w) x C, after the final norm
        patches = tokens[:, self.num_prefix_tokens:]  # B x h*w x C
        if patches.shape[1] != h * w:
            raise RuntimeError(f"{self.name} returned {patches.shape[1]} patch tokens for a {h}x{w} grid.")
        features = patches.transpose(1, 2).reshape(b, -1, h, w)  # B x C x h x w
        if self.token_grid != self.grid:
            features = F.interpolate(features, size=self.grid, mode="bilinear", align_corners=False)
        return features  # B x C x latent h x latent w


# ------------------------------------------------------------------------------------------- construction


def _state_dict_dims(state_dict: Mapping[str, torch.Tensor]) -> tuple[Optional[int], int]:
    embed = state_dict.get("cls_token", state_dict.get("pos_embed"))
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    return (int(embed.shape[-1]) if embed is not None else None), depth


def _unwrap(content: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("model", "state_dict", "teacher"):
        if isinstance(content.get(key), Mapping) and not isinstance(content.get(key), torch.Tensor):
            return content[key]
    return content


def _resolve_checkpoint_file(path: Path) -> tuple[Path, Optional[str]]:
    """A file, or a timm/Hugging Face folder (model.safetensors / pytorch_model.bin, config.json 'architecture')."""
    if path.is_file():
        config = path.parent / "config.json"
    elif path.is_dir():
        config = path / "config.json"
        for candidate in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise FileNotFoundError(f"{path}: folder without model.safetensors or pytorch_model.bin.")
    else:
        raise FileNotFoundError(f"Foundation model checkpoint {path} does not exist.")
    arch = None
    if config.is_file():
        try:
            arch = json.loads(config.read_text()).get("architecture")
        except (ValueError, OSError):
            arch = None
    return path, arch


def _load_backbone_from_file(name: str, checkpoint_path: PathLike, model_kwargs: dict,
                             trust_pickle: bool) -> tuple[nn.Module, str]:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    path, config_arch = _resolve_checkpoint_file(Path(checkpoint_path))
    state = dict(_unwrap(load_state_file(path, trust_pickle=trust_pickle)))
    arch, tag = split_model_name(name)
    if config_arch and config_arch != arch and not model_kwargs:
        logger.info("Using architecture %s from %s", config_arch, path.parent / "config.json")
        arch, name = config_arch, config_arch
    backbone = timm.create_model(arch, pretrained=False, dynamic_img_size=True, **model_kwargs)
    embed, depth = _state_dict_dims({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    model_depth = len(backbone.blocks)
    if (embed, depth) != (backbone.embed_dim, model_depth):
        inferred = DINOV2_ARCHITECTURES.get((embed, depth))
        if inferred is None or model_kwargs:
            raise KeyMismatchError(
                f"{path}: a ViT with width {embed} and depth {depth}, but '{arch}' has width {backbone.embed_dim} "
                f"and depth {model_depth}. Pass the matching timm model name (--vf_model / name=...).")
        if "register_tokens" in state or "reg_token" in state:
            inferred = inferred.replace("_patch14_", "_patch14_reg4_")
        logger.info("%s holds a %s (width %d, depth %d); using that architecture instead of %s.",
                    path, inferred, embed, depth, arch)
        arch, name = inferred, inferred
        backbone = timm.create_model(arch, pretrained=False, dynamic_img_size=True)
    # timm's own filter: converts Meta's original DINOv2 layout (mask_token, w12/w3) and resamples pos_embed.
    state = checkpoint_filter_fn({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, backbone)
    load_state_dict_checked(backbone, state, source=str(path),
                            hint="Check that the file is a DINOv2/ViT checkpoint for this architecture.")
    return backbone, name


def _hub_id(name: str) -> Optional[str]:
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown names are reported by timm.create_model later
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _hub_cached_weights(hub_id: Optional[str]) -> Optional[Path]:
    """timm's weights already in the Hugging Face cache (a previous online run): usable offline."""
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def create_foundation_model(name: str = DEFAULT_FOUNDATION_MODEL, *, pretrained: bool = True,
                            checkpoint_path: Optional[PathLike] = None, latent_size: Union[int, Sequence[int]] = 16,
                            imagenet_norm: bool = False, model_kwargs: Optional[dict] = None,
                            trust_pickle: bool = False,
                            token_grid: Optional[Union[int, Sequence[int]]] = None) -> FoundationModel:
    """A frozen, eval-mode DINOv2 (or other timm ViT) giving B x C x latent_size x latent_size features.

    ``token_grid`` (None: the latent grid, as released) runs the ViT on a coarser grid and upsamples its features.

    ``checkpoint_path`` (file or timm/HF folder) wins over ``pretrained`` (callers pass the copy step2 found);
    with ``pretrained=True`` the Hugging Face cache of an earlier download is used before timm's own download,
    which is only tried when :func:`microdoppler_finetune.utils.hub.hub_unreachable_reason` says the Hub can be
    reached. ``model_kwargs`` go to ``timm.create_model`` (e.g. a small ``depth`` for tests; only with random or
    matching local weights).
    """
    import timm

    model_kwargs = dict(model_kwargs or {})
    arch, tag = split_model_name(name)
    if checkpoint_path is None and pretrained and not model_kwargs:
        # The Hugging Face cache of an earlier download, usable offline.
        checkpoint_path = _hub_cached_weights(_hub_id(name))
    if checkpoint_path is not None:
        backbone, name = _load_backbone_from_file(name, checkpoint_path, model_kwargs, trust_pickle)
        weights = f"file:{Path(checkpoint_path).name}"
    elif pretrained:
        if model_kwargs:
            raise ValueError(f"model_kwargs {model_kwargs} change the architecture of '{name}'; pretrained weights "
                             f"would not fit. Use pretrained=False or a matching checkpoint_path.")
        try:
            # Without this, an offline machine waits a minute in huggingface_hub's retries before timm gives up.
            offline = hub_unreachable_reason()
            if offline:
                raise ConnectionError(f"{offline}, and the weights are not in the Hugging Face cache")
            # dynamic_img_size: pos_embed is resampled to the grid at each call, as the release does.
            backbone = timm.create_model(name, pretrained=True, dynamic_img_size=True)
        except Exception as exc:  # noqa: BLE001 - offline, missing cache, hub errors: one clear message
            raise FoundationWeightsUnavailable(
                f"Pretrained weights for '{name}' could not be loaded ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}).\n"
                f"Provide the file and pass it as checkpoint_path (command line: --vf_model PATH): model.safetensors "
                f"from https://huggingface.co/timm/{arch}{'.' + tag if tag else ''} . On Kaggle, attach it as an "
                f"input and run step2_download_models.py --kaggle (it finds it); online, step2 --what dinov2 "
                f"downloads it."
            ) from exc
        weights = f"pretrained:{tag or 'timm-default'}"
    else:
        backbone = timm.create_model(arch, pretrained=False, dynamic_img_size=True, **model_kwargs)
        weights = "random"
    if not hasattr(backbone, "forward_features") or not hasattr(backbone, "patch_embed"):
        raise TypeError(f"'{name}' is not a timm ViT with a patch embedding; it cannot give a patch-token grid.")
    return FoundationModel(backbone, name=name, latent_size=latent_size, imagenet_norm=imagenet_norm,
                           weights=weights, token_grid=token_grid)


# ------------------------------------------------------------------------------------------- feature cache


class FoundationFeatureCache:
    """Foundation features per (manifest entry key, flip, model identity, input size), in memory and/or on disk.

    On disk: safetensors shards in ``cache_dir/<namespace>/`` (one folder per model identity and input size),
    each written atomically under a unique name, so several processes (DDP ranks) can share a folder. Features
    are stored in ``storage_dtype`` (float32 keeps them bit-identical; float16 halves memory) and every
    lookup — first computation included — returns the stored values, so a hit equals the first result.
    """

    def __init__(self, model_name: str, input_size: Union[int, Sequence[int]], *, cache_dir: Optional[PathLike] = None,
                 in_memory: bool = True, storage_dtype: torch.dtype = torch.float32, shard_size: int = 256,
                 flip_flag_required: bool = False, write: bool = True):
        if cache_dir is None and not in_memory:
            raise ValueError("FoundationFeatureCache needs in_memory=True or a cache_dir (or both).")
        self.model_name = str(model_name)
        self.input_size = _grid(input_size)
        self.in_memory = bool(in_memory)
        self.storage_dtype = storage_dtype
        self.shard_size = int(shard_size)
        # When the dataset flips images at random, each batch must say which ones it flipped.
        self.flip_flag_required = bool(flip_flag_required)
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._on_disk: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self.directory: Optional[Path] = None
        # write=False: read the shards on disk, never add any (the DDP ranks other than 0: one writer per folder).
        self.write = bool(write)
        if cache_dir is not None:
            namespace = hashlib.sha256(json.dumps([self.model_name, self.input_size]).encode()).hexdigest()[:16]
            self.directory = Path(cache_dir) / namespace
            if self.write:
                from microdoppler_finetune.utils.files import atomic_write_json

                self.directory.mkdir(parents=True, exist_ok=True)
                info = self.directory / "namespace.json"
                if not info.exists():
                    atomic_write_json(info, {"model_name": self.model_name, "input_size": self.input_size}, indent=1)
            self._scan_disk()

    @classmethod
    def for_model(cls, model: FoundationModel, **kwargs) -> "FoundationFeatureCache":
        return cls(model.cache_identity, model.input_size, **kwargs)

    # ------------------------------------------------------------------ keys and storage

    def key(self, entry_key: str, flip: bool) -> str:
        payload = json.dumps([str(entry_key), bool(flip), self.model_name, list(self.input_size)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _scan_disk(self) -> None:
        from safetensors import safe_open

        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            if shard in self._handles:
                continue
            try:
                handle = safe_open(str(shard), framework="pt", device="cpu")
            except Exception as exc:  # noqa: BLE001 - a broken shard is skipped, not fatal
                logger.warning("Skipping unreadable feature-cache shard %s (%s)", shard, exc)
                continue
            self._handles[shard] = handle
            for name in handle.keys():
                self._on_disk.setdefault(name, shard)

    def __len__(self) -> int:
        return len(set(self._memory) | set(self._pending) | set(self._on_disk))

    def get(self, entry_key: str, flip: bool = False) -> Optional[torch.Tensor]:
        """Stored features (C x h x w) or None."""
        key = self.key(entry_key, flip)
        found = self._memory.get(key)
        if found is None:
            found = self._pending.get(key)
        if found is None and key in self._on_disk:
            found = self._handles[self._on_disk[key]].get_tensor(key)
            if self.in_memory:
                self._memory[key] = found
        return found

    def put(self, entry_key: str, flip: bool, features: torch.Tensor) -> torch.Tensor:
        """Store C x h x w features; returns the stored (possibly down-cast) copy."""
        key = self.key(entry_key, flip)
        stored = features.detach().to(device="cpu", dtype=self.storage_dtype).contiguous().clone()
        if self.in_memory:
            self._memory[key] = stored
        if self.directory is not None and self.write:
            self._pending[key] = stored
            if len(self._pending) >= self.shard_size:
                self.flush()
        return stored

    def flush(self) -> None:
        """Write the features not yet on disk as one new shard."""
        if self.directory is None or not self._pending:
            return
        from safetensors import safe_open
        from safetensors.torch import save_file

        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        path = self.directory / name
        tmp = path.with_name(path.name + ".tmp")
        save_file(dict(self._pending), str(tmp), metadata={"model_name": self.model_name,
                                                          "input_size": json.dumps(self.input_size)})
        tmp.replace(path)
        self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
        for key in self._pending:
            self._on_disk[key] = path
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._handles.clear()

    # ------------------------------------------------------------------ batches

    def _flip_flags(self, batch: Mapping[str, Any], size: int, flipped) -> list[bool]:
        if flipped is None:
            flipped = batch.get("flipped", batch.get("flip"))
        if flipped is None:
            if self.flip_flag_required:
                raise KeyError("The feature cache was told images are flipped at random, but the batch has no "
                               "'flipped' entry saying which ones; the dataset must report it.")
            return [False] * size
        if isinstance(flipped, torch.Tensor):
            flipped = flipped.tolist()
        if isinstance(flipped, bool):
            flipped = [flipped] * size
        return [bool(f) for f in flipped]

    def features_for_batch(self, batch: Mapping[str, Any], x: torch.Tensor, model: nn.Module,
                           flipped: Optional[Sequence[bool]] = None) -> torch.Tensor:
        """Features B x C x h x w for the batch's images; runs ``model`` only on the entries not cached yet.

        Entries are keyed by ``batch['path']`` (the manifest path) and the flip flag (``flipped`` argument,
        else ``batch['flipped']``); ``x`` is the image batch as the model sees it.
        """
        identity = getattr(model, "cache_identity", None)
        if identity is not None and identity != self.model_name:
            raise ValueError(f"Feature cache built for '{self.model_name}' used with model '{identity}'; make one "
                             f"cache per foundation model (FoundationFeatureCache.for_model).")
        if "path" not in batch:
            raise KeyError("features_for_batch needs batch['path'] (the manifest entry of each image) as cache key.")
        paths = [str(p) for p in batch["path"]]
        flips = self._flip_flags(batch, len(paths), flipped)
        found = [self.get(p, f) for p, f in zip(paths, flips)]
        todo = [i for i, feats in enumerate(found) if feats is None]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        if todo:
            computed = model(x[todo])  # B' x C x h x w
            for row, i in enumerate(todo):
                found[i] = self.put(paths[i], flips[i], computed[row])
        # Outside autocast: CPU autocast (bf16) refuses to promote the float16 entries of the cache in stack
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.stack(found).to(device=x.device)


__all__ = [
    "FoundationModel", "FoundationFeatureCache", "FoundationWeightsUnavailable", "create_foundation_model",
    "DEFAULT_FOUNDATION_MODEL", "DINOV2_ARCHITECTURES", "split_model_name",
]
