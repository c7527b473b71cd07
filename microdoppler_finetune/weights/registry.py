"""The released files this project uses: their Hub repositories and names, and the names they may carry locally."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# Derived files: our safetensors conversion of the pickled VA-VAE release and its latent statistics.
VAVAE_CONVERTED_NAME = "vavae-imagenet256-f16d32-dinov2.safetensors"
LATENTS_STATS_JSON = "latents_stats.json"


def _is_dinov2_large_file(path: Path) -> bool:
    """A generic 'model.safetensors' counts as DINOv2-L only if its folder says so."""
    config = path.parent / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("architecture") == "vit_large_patch14_dinov2"
        except (ValueError, OSError):
            return False
    return "vit_large_patch14_dinov2" in str(path.parent)


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    size: Optional[int] = None  # bytes, when known in advance
    sha256: Optional[str] = None  # when known in advance; otherwise the Hub's or the first run's value
    # Other names under which the same content may be attached (Kaggle datasets rename files).
    local_names: tuple = ()
    # Extra test for files found outside the Hugging Face cache under a generic name (e.g. 'model.safetensors').
    accept: Optional[Callable[[Path], bool]] = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.filename}"


@dataclass(frozen=True)
class PretrainedItem:
    name: str
    description: str
    files: tuple
    timm_model: Optional[str] = None


# Sizes and hashes of the released files are not recorded here: they could not be read on the machines this
# project was written on (no Hub access). They are taken from the Hub's metadata at download time (or the ETag
# huggingface_hub names the cached file after) and recorded in pretrained_index.json; fill them in here to verify
# offline copies on first sight.
REGISTRY: dict[str, PretrainedItem] = {
    "vavae": PretrainedItem(
        "vavae", "released VA-VAE f16d32 aligned to DINOv2 (LightningDiT tokenizer) + its ImageNet latent stats",
        (RemoteFile("hustvl/vavae-imagenet256-f16d32-dinov2", "vavae-imagenet256-f16d32-dinov2.pt"),
         RemoteFile("hustvl/vavae-imagenet256-f16d32-dinov2", "latents_stats.pt"))),
    "dinov2": PretrainedItem(
        "dinov2", "DINOv2 ViT-L/14 (timm vit_large_patch14_dinov2.lvd142m), the VF-loss alignment target",
        (RemoteFile("timm/vit_large_patch14_dinov2.lvd142m", "model.safetensors",
                    local_names=("vit_large_patch14_dinov2.lvd142m.safetensors", "dinov2_vitl14_pretrain.pth"),
                    accept=_is_dinov2_large_file),),
        timm_model="vit_large_patch14_dinov2.lvd142m"),
    "lightningdit-xl-64ep": PretrainedItem(
        "lightningdit-xl-64ep", "released LightningDiT-XL/1, ImageNet 256, 64 epochs (~10 GB)",
        (RemoteFile("hustvl/lightningdit-xl-imagenet256-64ep", "lightningdit-xl-imagenet256-64ep.pt"),)),
    "lightningdit-xl-800ep": PretrainedItem(
        "lightningdit-xl-800ep", "released LightningDiT-XL/1, ImageNet 256, 800 epochs (~10 GB)",
        (RemoteFile("hustvl/lightningdit-xl-imagenet256-800ep", "lightningdit-xl-imagenet256-800ep.pt"),)),
}
ALIASES = {"lightningdit-xl": "lightningdit-xl-800ep", "va-vae": "vavae", "dinov2-l": "dinov2"}
DEFAULT_WHAT = ("vavae", "dinov2")


def resolve_name(name: str) -> str:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in REGISTRY:
        raise KeyError(f"Unknown pretrained item '{name}'. Known: {', '.join(REGISTRY)} "
                       f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())}).")
    return key


def registry_item_for_timm_model(model_name: str) -> Optional[str]:
    """The registry item holding weights of a timm model name, if any ('vit_large_patch14_dinov2.lvd142m')."""
    bare = model_name.split("hf-hub:timm/")[-1].split("timm/")[-1]
    for key, item in REGISTRY.items():
        if item.timm_model and item.timm_model in (bare, bare + ".lvd142m"):
            return key
    return None


def expected_names(key: str) -> list[str]:
    """File names that provide an item, best first (for vavae our conversion beats the pickled release)."""
    primary = REGISTRY[key].files[0]
    names = [VAVAE_CONVERTED_NAME] if key == "vavae" else []
    return names + [primary.filename, *primary.local_names]


def accepts(remote: RemoteFile, name: str, path: Path) -> bool:
    """Whether ``path`` (found under ``name``) may stand for ``remote``: generic names need their folder's consent."""
    if name == remote.filename and remote.accept is not None:
        return remote.accept(path)
    return True
