"""``pretrained_index.json``: what step2 found or converted, where, and the size/sha256 it verified.

One entry per item (``items.<name>``): ``files.<released file name>`` records (path, size, mtime, sha256, where the
expected hash came from: registry / hub / hf-cache / first-use, origin), ``primary`` (the file later steps load),
and for the VA-VAE ``converted`` (our safetensors conversion) and ``discriminator`` (the released PatchGAN kept in
that conversion, or null when the release file had none).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Union

from microdoppler_finetune.utils.files import atomic_write_json

PathLike = Union[str, Path]

INDEX_NAME = "pretrained_index.json"
INDEX_FORMAT_VERSION = 1


def load_index(cache_dir: PathLike) -> dict:
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        return {"format_version": INDEX_FORMAT_VERSION, "items": {}}
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}). Delete it; step2 rebuilds it (files are re-hashed)."
                         ) from exc
    index.setdefault("items", {})
    return index


def save_index(cache_dir: PathLike, index: dict) -> Path:
    index["format_version"] = INDEX_FORMAT_VERSION
    index["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return atomic_write_json(Path(cache_dir) / INDEX_NAME, index, indent=2, sort_keys=True)


def indexed_entry(cache_dir: PathLike, key: str) -> Optional[dict]:
    """The index entry of item ``key`` in ``cache_dir`` (None: no index there, or the item is not in it)."""
    if not (Path(cache_dir) / INDEX_NAME).is_file():
        return None
    return load_index(cache_dir)["items"].get(key)


def record_for(entry: dict, path: Path) -> Optional[dict]:
    """The record of ``path`` among an entry's files and conversion."""
    records = list(entry.get("files", {}).values())
    if entry.get("converted"):
        records.append(entry["converted"])
    return next((r for r in records if r.get("path") == str(path)), None)
