"""Where the released files are on this machine: folders the user names, the Hugging Face cache, Kaggle inputs.

Downloads go through ``hf_hub_download`` into the Hugging Face cache (``$HF_HOME/hub``, ``$HF_HUB_CACHE``), so each
released file exists once on the machine and every tool that uses huggingface_hub (timm too) finds it there. Our
own cache folder (:func:`default_cache_dir`) holds only derived data: ``pretrained_index.json`` and the one-time
safetensors conversion of the VA-VAE.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Union

from microdoppler_finetune.environment import kaggle_input_root, kaggle_working_root, running_on_kaggle
from microdoppler_finetune.weights.index import indexed_entry, record_for
from microdoppler_finetune.weights.registry import REGISTRY, RemoteFile, accepts, expected_names, resolve_name

PathLike = Union[str, Path]

PRETRAINED_DIR_ENV = "MDF_PRETRAINED_DIR"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir(kaggle: bool = False) -> Path:
    """$MDF_PRETRAINED_DIR, else /kaggle/working/pretrained with --kaggle, else ~/.cache/microdoppler_finetune."""
    if os.environ.get(PRETRAINED_DIR_ENV):
        return Path(os.environ[PRETRAINED_DIR_ENV])
    if kaggle:
        return kaggle_working_root() / "pretrained"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "microdoppler_finetune" / "pretrained"


def candidate_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(PRETRAINED_DIR_ENV):
        dirs.append(Path(os.environ[PRETRAINED_DIR_ENV]))
    if running_on_kaggle() or (kaggle_working_root() / "pretrained").is_dir():
        dirs.append(kaggle_working_root() / "pretrained")
    dirs.append(default_cache_dir(False))
    return list(dict.fromkeys(dirs))


def search_tree(roots: Iterable[PathLike], names: Iterable[str], max_depth: int = 8) -> dict[str, list[Path]]:
    """Files with one of ``names`` below ``roots`` (files given directly count too), by name."""
    wanted = set(names)
    found: dict[str, list[Path]] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            if root.name in wanted:
                found.setdefault(root.name, []).append(root)
            continue
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for current, dirs, files in os.walk(root, followlinks=True):
            if len(Path(current).parts) - base_depth >= max_depth:
                dirs[:] = []
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(wanted.intersection(files)):
                found.setdefault(name, []).append(Path(current) / name)
    return found


def origin_of(path: Path) -> str:
    """'kaggle-input' for files under the Kaggle input root, 'local-dir' for anything else found by search."""
    return "kaggle-input" if str(path).startswith(str(kaggle_input_root())) else "local-dir"


# ----------------------------------------------------------------------------------------------- HF cache


def hf_cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_cache_file(remote: RemoteFile) -> Optional[Path]:
    """The cached copy of ``remote`` in the Hugging Face cache (the 'main' revision first, then any other)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(remote.repo_id, remote.filename, cache_dir=str(hf_cache_root()))
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    snapshots = hf_cache_root() / ("models--" + remote.repo_id.replace("/", "--")) / "snapshots"
    others = [p for p in snapshots.glob(f"*/{remote.filename}") if p.is_file()] if snapshots.is_dir() else []
    return max(others, key=lambda p: p.stat().st_mtime) if others else None


def hf_cache_etag(path: Path) -> Optional[str]:
    """The sha256 huggingface_hub named a cached LFS file after (the Hub's ETag at download time), if any."""
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and _SHA256.match(target.name):
        return target.name
    return None


def in_hf_cache(path: Path) -> bool:
    try:
        Path(path).absolute().relative_to(hf_cache_root().absolute())
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- find


def find_pretrained(name: str, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """Where a pretrained item is (None: not on this machine). Later steps call this; step2 fills the index.

    Looks at what step2 recorded in ``cache_dir`` (default: $MDF_PRETRAINED_DIR, the Kaggle working cache, the
    local cache) and our conversion there, then the Hugging Face cache, then (on Kaggle) the attached inputs by
    file name. For 'vavae' the safetensors conversion is preferred over the pickled release.
    """
    key = resolve_name(name)
    dirs = [Path(cache_dir)] if cache_dir is not None else candidate_cache_dirs()
    names = expected_names(key)
    for directory in dirs:
        entry = indexed_entry(directory, key)
        if entry and entry.get("primary"):
            primary = Path(entry["primary"])
            record = record_for(entry, primary)
            if primary.is_file() and (record is None or record.get("size") == primary.stat().st_size):
                return primary
        for candidate in names:  # our conversion, or files an earlier version downloaded into <cache>/<item>/
            path = directory / key / candidate
            if path.is_file():
                return path
    cached = hf_cache_file(REGISTRY[key].files[0])
    if cached is not None:
        return cached
    if running_on_kaggle():
        primary = REGISTRY[key].files[0]
        found = search_tree([kaggle_input_root()], names)
        for candidate in names:
            for path in found.get(candidate, []):
                if accepts(primary, candidate, path):
                    return path
    return None
