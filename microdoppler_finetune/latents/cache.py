"""The latent cache the DiT trains on: the manifest's images encoded once by the exported VA-VAE.

Layout of ``<work_dir>/latents/``::

    latent_cache.json         identity of the encoder and of the manifest, image size, counts, shard list,
                              the per-channel latents_mean/latents_std, how the samples were drawn
    train-00000.safetensors   one shard (at most export.shard_size images) of one split
    val-00000.safetensors

Each shard holds, per image (N rows):

    latents         float32 [N,C,h,w]  z = mean + std * eps, one posterior sample with a fixed seed: eps is drawn
                                       from a generator seeded by (sample_seed, manifest row, flipped), so the
                                       sample of an image does not depend on batch size, order or device
    posterior_mean  float32 [N,C,h,w]  so the DiT can draw fresh samples every epoch (resample=True) ...
    posterior_std   float32 [N,C,h,w]  ... as the released VA-VAE training does with posterior.sample()
    person_id       int64 [N]
    condition_id    int64 [N]
    index           int64 [N]          row of the image in manifest.csv (all splits, 0-based, header excluded)
    flipped         uint8 [N]          1 for a horizontally flipped copy (only when data.flip is on)

``load_latent_cache`` refuses a cache written by another encoder or for another manifest: a DiT trained on
latents of one VA-VAE and decoded with another produces garbage without any error.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from microdoppler_finetune.latents.export import EXPORT_INFO_FILE, read_export_info, vae_identity
from microdoppler_finetune.utils.files import file_sha256, swap_in_folder, temporary_sibling
from microdoppler_finetune.utils.progress import progress

CACHE_FORMAT = "microdoppler_finetune.latents.cache"
CACHE_VERSION = 1
CACHE_INFO_FILE = "latent_cache.json"
TENSOR_KEYS = ("latents", "posterior_mean", "posterior_std", "person_id", "condition_id", "index", "flipped")
REBUILD_HINT = ("Rebuild the cache with the encoder you use: python microdoppler_finetune/step5_validate_export.py "
                "--run <work_dir>/vae --cache (or --checkpoint <that VA-VAE> --cache).")


class LatentCacheMismatchError(ValueError):
    """The cache was written by another encoder or for another manifest than the caller expects."""


# ------------------------------------------------------------------------------------------- encoding


@dataclass
class EncodedSplit:
    """All images of one split, encoded (rows in dataset order, flipped copies after the originals)."""

    split: str
    latents: torch.Tensor  # [N,C,h,w] posterior samples with per-image fixed seeds
    posterior_mean: torch.Tensor  # [N,C,h,w]
    posterior_std: torch.Tensor  # [N,C,h,w]
    person_id: torch.Tensor  # [N] int64
    condition_id: torch.Tensor  # [N] int64
    index: torch.Tensor  # [N] int64, manifest row
    flipped: torch.Tensor  # [N] uint8

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def originals(self) -> "EncodedSplit":
        """Only the unflipped rows (maps and separability compare real images)."""
        keep = self.flipped == 0
        return EncodedSplit(self.split, *(getattr(self, k)[keep] for k in TENSOR_KEYS))


def item_seed(sample_seed: int, manifest_index: int, flipped: bool) -> int:
    """The posterior-sample seed of one image: fixed by the image, not by its batch or position."""
    return (int(sample_seed) * 1_000_003 + 2 * int(manifest_index) + int(bool(flipped))) % (2**63 - 1)


def fixed_seed_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per seed, drawn on the CPU (same numbers on every device)."""
    out = torch.empty((len(seeds), *shape))
    for row, seed in enumerate(seeds):
        out[row] = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))
    return out


def flip_images(images: torch.Tensor) -> torch.Tensor:
    """The flip augmentation of the training data: mirror the last (width) axis of [B,3,H,W]."""
    return images.flip(-1)


@torch.no_grad()
def encode_split(
    model: torch.nn.Module,
    dataset: Dataset,
    split: str,
    *,
    sample_seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    flip_copies: bool = False,
    num_workers: int = 0,
) -> EncodedSplit:
    """Encode every item of ``dataset`` (MicroDopplerDataset items) with ``model.encode`` (VAVAE API).

    ``flip_copies`` adds a flipped copy of every image (only when the training config flips: a flipped
    spectrogram is time-reversed or Doppler-inverted, i.e. not a real measurement).
    """
    model.eval()  # no dropout; the posterior must not depend on the mode
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts: Dict[bool, Dict[str, list]] = {False: {k: [] for k in TENSOR_KEYS}, True: {k: [] for k in TENSOR_KEYS}}
    variants = (False, True) if flip_copies else (False,)
    done = 0
    for batch in progress(loader, desc=f"encode {split}", unit="batch"):
        images = batch["image"].to(device=device, dtype=torch.float32)  # [B,3,H,W] in [-1,1]
        indices = batch["index"].long()
        for flipped in variants:
            x = flip_images(images) if flipped else images
            posterior = model.encode(x)
            mean = posterior.mean.float().cpu()  # [B,C,h,w]
            std = posterior.std.float().cpu()  # from the clamped logvar
            eps = fixed_seed_noise(mean.shape[1:], [item_seed(sample_seed, i, flipped) for i in indices.tolist()])
            store = parts[flipped]
            store["latents"].append(mean + std * eps)
            store["posterior_mean"].append(mean)
            store["posterior_std"].append(std)
            store["person_id"].append(batch["person_id"].long())
            store["condition_id"].append(batch["condition_id"].long())
            store["index"].append(indices)
            store["flipped"].append(torch.full((len(indices),), int(flipped), dtype=torch.uint8))
        done += images.shape[0]
    if done == 0:
        raise ValueError(f"The '{split}' split has no images to encode.")
    tensors = {k: torch.cat(parts[False][k] + (parts[True][k] if flip_copies else []), dim=0) for k in TENSOR_KEYS}
    return EncodedSplit(split, **tensors)


# ------------------------------------------------------------------------------------------- writing


def _shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.safetensors"


def write_latent_cache(
    encoded: Dict[str, EncodedSplit],
    out_dir: str | Path,
    *,
    vae_identity_hash: str,
    manifest_path: str | Path,
    image_size: int,
    latents_mean: Sequence[float],
    latents_std: Sequence[float],
    sample_seed: int,
    flip: bool,
    shard_size: int = 2048,
    complete: bool = True,
    extra_info: Optional[dict] = None,
) -> Path:
    """Write the shards and ``latent_cache.json``; replaces an earlier cache in ``out_dir`` as a whole.

    Written into a temporary sibling folder first and swapped in at the end, so an interrupted run never
    leaves a mix of old and new shards behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CACHE_INFO_FILE).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a latent cache (no {CACHE_INFO_FILE}); refusing to "
                              f"replace it. Choose another --work_dir or move that folder.")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    manifest_file = manifest_file_of(manifest_path)
    manifest_hash = file_sha256(manifest_file)
    tmp = temporary_sibling(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    metadata = {"format": CACHE_FORMAT, "vae_identity": vae_identity_hash, "manifest_sha256": manifest_hash}
    splits_info = {}
    latent_shape = None
    for split, data in encoded.items():
        shards = []
        for number, start in enumerate(range(0, len(data), shard_size)):
            rows = slice(start, start + shard_size)
            tensors = {k: getattr(data, k)[rows].contiguous() for k in TENSOR_KEYS}
            name = _shard_name(split, number)
            save_file(tensors, str(tmp / name), metadata={**metadata, "split": split})
            shards.append({"file": name, "count": int(tensors["latents"].shape[0])})
        latent_shape = list(data.latents.shape[1:])
        splits_info[split] = {
            "count": len(data),
            "flipped_copies": int(data.flipped.sum()),
            "persons": sorted(set(data.person_id.tolist())),
            "conditions": sorted(set(data.condition_id.tolist())),
            "shards": shards,
        }
    info = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "vae_identity": vae_identity_hash,
        "manifest": str(manifest_file.resolve()),
        "manifest_sha256": manifest_hash,
        "image_size": int(image_size),
        "latent_shape": latent_shape,
        "latents_mean": [float(v) for v in latents_mean],
        "latents_std": [float(v) for v in latents_std],
        "sample_seed": int(sample_seed),
        "flip": bool(flip),
        "complete": bool(complete),
        "samples": "latents = posterior_mean + posterior_std * eps; eps ~ N(0, I) from a CPU torch.Generator "
                   "seeded with (sample_seed * 1000003 + 2 * manifest_row + flipped) mod (2^63 - 1)",
        "normalisation": "the DiT sees (z - latents_mean) / latents_std per channel",
        "splits": splits_info,
        **(extra_info or {}),
    }
    (tmp / CACHE_INFO_FILE).write_text(json.dumps(info, indent=2))
    swap_in_folder(tmp, out_dir)
    return out_dir / CACHE_INFO_FILE


def manifest_file_of(path: str | Path) -> Path:
    """manifest.csv itself, or the dataset folder that holds it."""
    path = Path(path)
    candidate = path / "manifest.csv" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"No manifest at {candidate}. Pass the manifest.csv (or its folder) that step3 "
                                f"wrote.")
    return candidate


# ------------------------------------------------------------------------------------------- loading


@dataclass
class LatentCache:
    """One split of a verified latent cache (all shards concatenated)."""

    split: str
    latents: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_std: torch.Tensor
    person_id: torch.Tensor
    condition_id: torch.Tensor
    index: torch.Tensor
    flipped: torch.Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    @property
    def vae_identity(self) -> str:
        return self.info["vae_identity"]

    @property
    def latents_mean(self) -> torch.Tensor:
        return torch.tensor(self.info["latents_mean"], dtype=torch.float32)

    @property
    def latents_std(self) -> torch.Tensor:
        return torch.tensor(self.info["latents_std"], dtype=torch.float32)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [..., C, h, w] -> what the DiT models: (z - mean) / std per channel."""
        shape = (-1, 1, 1)
        return (z - self.latents_mean.to(z).view(shape)) / self.latents_std.to(z).view(shape)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """DiT output -> latents the VA-VAE decoder takes."""
        shape = (-1, 1, 1)
        return z * self.latents_std.to(z).view(shape) + self.latents_mean.to(z).view(shape)

    def dataset(self, *, resample: bool = False, normalize: bool = True) -> "LatentDataset":
        return LatentDataset(self, resample=resample, normalize=normalize)


class LatentDataset(Dataset):
    """Items {latent [C,h,w], person_id, condition_id, index} for DiT training.

    resample=False: the cached fixed-seed sample (identical every epoch);
    resample=True: a fresh posterior sample mean + std * randn each time an item is read (the global RNG).
    """

    def __init__(self, cache: LatentCache, *, resample: bool = False, normalize: bool = True):
        self.cache = cache
        self.resample = resample
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        c = self.cache
        if self.resample:
            z = c.posterior_mean[i] + c.posterior_std[i] * torch.randn_like(c.posterior_std[i])
        else:
            z = c.latents[i]
        if self.normalize:
            z = c.normalize(z)
        return {"latent": z, "person_id": int(c.person_id[i]), "condition_id": int(c.condition_id[i]),
                "index": int(c.index[i])}


def read_cache_info(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / CACHE_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No latent cache in {cache_dir} ({CACHE_INFO_FILE} missing). Write it with "
                                f"python microdoppler_finetune/step5_validate_export.py --run <work_dir>/vae --cache")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}). {REBUILD_HINT}") from exc
    if info.get("format") != CACHE_FORMAT or info.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} is not a version-{CACHE_VERSION} latent cache of this project "
                         f"(format={info.get('format')!r}, version={info.get('version')!r}). {REBUILD_HINT}")
    return info


ExpectedIdentity = Union[str, Path, torch.nn.Module, None]


def resolve_vae_identity(expected: ExpectedIdentity) -> Optional[str]:
    """An identity hash from: the hash itself, a VA-VAE model, or an exported encoder folder."""
    if expected is None:
        return None
    if isinstance(expected, torch.nn.Module):
        return vae_identity(expected)
    if isinstance(expected, Path) or (isinstance(expected, str) and Path(expected).is_dir()):
        folder = Path(expected)
        if not (folder / EXPORT_INFO_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {EXPORT_INFO_FILE}: pass the exported encoder folder "
                                    f"(<work_dir>/export/vavae_encoder_for_dit), the VA-VAE model, or its hash.")
        return read_export_info(folder)["vae_identity"]
    return str(expected)


def resolve_manifest_hash(expected: Union[str, Path, None]) -> Optional[str]:
    """A manifest sha256 from: the hash itself, manifest.csv, or the dataset folder holding it."""
    if expected is None:
        return None
    path = Path(expected)
    if path.exists():
        return file_sha256(manifest_file_of(path))
    text = str(expected)
    if len(text) == 64 and all(ch in "0123456789abcdef" for ch in text.lower()):
        return text.lower()
    raise FileNotFoundError(f"expected_manifest={expected!r} is neither an existing manifest (file or folder) nor "
                            f"a sha256 hex digest.")


def load_latent_cache(
    cache_dir: str | Path,
    *,
    expected_vae_identity: ExpectedIdentity,
    expected_manifest: Union[str, Path, None] = None,
    split: str = "train",
) -> LatentCache:
    """Load one split of the cache after checking who wrote it.

    ``expected_vae_identity``: the identity of the encoder the caller decodes with, as a hash string, the
    VA-VAE model itself, or the exported encoder folder. Pass None explicitly to skip the check (a warning is
    printed). ``expected_manifest``: manifest.csv, its folder or its sha256 (None: not checked).
    Raises LatentCacheMismatchError naming both hashes when they differ.
    """
    cache_dir = Path(cache_dir)
    info = read_cache_info(cache_dir)
    want_vae = resolve_vae_identity(expected_vae_identity)
    if want_vae is None:
        print(f"WARNING: loading the latent cache {cache_dir} without checking which VA-VAE wrote it "
              f"(expected_vae_identity=None).", flush=True)
    elif want_vae != info["vae_identity"]:
        raise LatentCacheMismatchError(
            f"The latent cache {cache_dir} was written by a different VA-VAE: cache encoder identity "
            f"{info['vae_identity']}, expected {want_vae} (the encoder you decode with). Latents of one VA-VAE "
            f"are meaningless to another. {REBUILD_HINT}")
    want_manifest = resolve_manifest_hash(expected_manifest)
    if want_manifest is not None and want_manifest != info["manifest_sha256"]:
        raise LatentCacheMismatchError(
            f"The latent cache {cache_dir} was written for another manifest: cache manifest sha256 "
            f"{info['manifest_sha256']} ({info.get('manifest')}), expected {want_manifest}. Its person ids, "
            f"splits and rows do not match your data. {REBUILD_HINT}")
    if split not in info["splits"]:
        raise KeyError(f"The latent cache {cache_dir} has no '{split}' split (it has "
                       f"{', '.join(info['splits'])}). {REBUILD_HINT}")
    if not info.get("complete", True):
        print(f"WARNING: the latent cache {cache_dir} is incomplete (written with --max_images).", flush=True)
    parts: Dict[str, list] = {k: [] for k in TENSOR_KEYS}
    for shard in info["splits"][split]["shards"]:
        if Path(shard["file"]).name != shard["file"] or shard["file"] in ("", ".", ".."):
            raise ValueError(f"{cache_dir / CACHE_INFO_FILE} lists the shard {shard['file']!r}, which is not a file of "
                             f"{cache_dir} (shards are plain names in the cache folder). {REBUILD_HINT}")
        path = cache_dir / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"Shard {path} listed in {cache_dir / CACHE_INFO_FILE} is missing. "
                                    f"{REBUILD_HINT}")
        tensors = load_file(str(path))
        _check_shard(path, tensors, shard["count"], info)
        for k in TENSOR_KEYS:
            parts[k].append(tensors[k])
    data = {k: torch.cat(v, dim=0) for k, v in parts.items()}
    if data["latents"].shape[0] != info["splits"][split]["count"]:
        raise ValueError(f"{cache_dir}: the '{split}' shards hold {data['latents'].shape[0]} rows, "
                         f"{CACHE_INFO_FILE} says {info['splits'][split]['count']}. {REBUILD_HINT}")
    return LatentCache(split=split, info=info, **data)


def _check_shard(path: Path, tensors: dict, count: int, info: dict) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    for key in ("vae_identity", "manifest_sha256"):
        if meta.get(key) != info[key]:
            raise LatentCacheMismatchError(f"Shard {path} has {key}={meta.get(key)}, but {CACHE_INFO_FILE} says "
                                           f"{info[key]}: shards of different caches are mixed. {REBUILD_HINT}")
    missing = [k for k in TENSOR_KEYS if k not in tensors]
    if missing or tensors["latents"].shape[0] != count:
        raise ValueError(f"Shard {path} is damaged (missing {missing} or {tensors['latents'].shape[0]} rows instead "
                         f"of {count}). {REBUILD_HINT}")
