"""Reading and writing checkpoint files safely, and reporting state_dict keys that do not fit a model.

Shared by every loader in the project (VA-VAE, DINOv2, DiT). The rules it enforces:

* ``torch.load(..., weights_only=True)`` always. A file that needs full unpickling (it can run arbitrary code)
  is refused with :class:`PickleRefusedError`, naming the file and the opt-in, unless the caller passes
  ``trust_pickle=True``.
* safetensors files carry their string metadata; :func:`read_safetensors` returns it next to the tensors.
* A state_dict that does not fit a model is never loaded silently: :func:`report_key_mismatch` lists every
  missing and unexpected key (grouped, so a 500-key mismatch stays readable) and raises
  :class:`KeyMismatchError` for any key nobody explained.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class PickleRefusedError(RuntimeError):
    """The file can only be read by unpickling arbitrary Python objects, and nobody said it may be."""


class KeyMismatchError(ValueError):
    """A state_dict has keys the model lacks, or lacks keys the model needs, and nothing explains them."""


# ----------------------------------------------------------------------------------------------- reading files


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (new format) or a raw pickle stream (legacy, starts with PROTO 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with the 8-byte little-endian length of its JSON header, then '{'."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def load_torch_file(path: PathLike, *, trust_pickle: bool = False, map_location="cpu", mmap: bool = True):
    """``torch.load`` a .pt/.ckpt/.pth/.bin file, weights-only unless ``trust_pickle``.

    ``mmap`` maps the tensors of new-format files instead of reading them into memory (a 2 GB checkpoint of
    which we keep 300 MB); legacy-format files are read normally.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    if not _looks_like_torch_file(path):
        if _looks_like_safetensors(path):
            raise ValueError(f"{path} is a safetensors file (weights only), not the PyTorch checkpoint expected "
                             f"here. Check that this is the file you meant.")
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle "
                         f"stream). Check that the download finished and that this is the file you meant.")
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            first_line = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
            raise PickleRefusedError(
                f"{path} contains pickled Python objects besides tensors, so it cannot be loaded with "
                f"torch.load(weights_only=True) ({first_line}). Unpickling runs arbitrary code: only do it for a "
                f"file you trust. To allow it, pass trust_pickle=True (command line: --trust_pickle). For the "
                f"released VA-VAE, step2_download_models.py converts the file to safetensors once, so later steps "
                f"never need this."
            ) from exc
    logger.warning("Loading %s with full unpickling (trust_pickle=True): only safe for trusted files.", path)
    return torch.load(str(path), map_location=map_location, weights_only=False, mmap=use_mmap)


def read_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for truncated/corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}). "
                         f"Re-download or re-convert it.") from exc
    return tensors, metadata


def read_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """Only the metadata header (cheap: no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                     metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write tensors (made contiguous, shared storage split) and string metadata; atomic via a temp file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views sharing storage; clone() gives each tensor its own contiguous buffer.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    tmp.replace(path)
    return path


def load_state_file(path: PathLike, trust_pickle: bool = False) -> dict:
    """The whole content of a checkpoint file as a dict.

    safetensors files give ``{name: tensor}`` (metadata: :func:`read_safetensors`); torch files give whatever
    was saved (often ``{"state_dict": ...}`` or ``{"model": ..., "ema": ...}``), weights-only unless
    ``trust_pickle``.
    """
    path = Path(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return read_safetensors(path)[0]
    content = load_torch_file(path, trust_pickle=trust_pickle)
    if not isinstance(content, Mapping):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a dict of tensors; it is not a checkpoint "
                         f"this project can read.")
    return dict(content)


# ----------------------------------------------------------------------------------------------- key reports


def summarize_keys(keys: Iterable[str], depth: int = 3, limit: int = 12) -> str:
    """'encoder.down.0.* (12), loss.* (2)': keys grouped by their first ``depth`` name parts."""
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[group] = groups.get(group, 0) + 1
    items = [f"{group} ({count})" if count > 1 else group for group, count in groups.items()]
    if len(items) > limit:
        items = items[:limit] + [f"... {len(items) - limit} more groups"]
    return ", ".join(items) if items else "none"


@dataclass
class KeyReport:
    """What happened to every key of a checkpoint when it was loaded into a model."""

    source: str
    loaded: int = 0
    missing: list = field(default_factory=list)  # model keys the file did not provide
    unexpected: list = field(default_factory=list)  # file keys the model has no place for
    ignored: dict = field(default_factory=dict)  # reason -> keys dropped on purpose (explained)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def describe(self) -> str:
        lines = [f"{self.source}: {self.loaded} tensors loaded"]
        for reason, keys in self.ignored.items():
            lines.append(f"  ignored {len(keys)} keys ({reason}): {summarize_keys(keys)}")
        if self.missing:
            lines.append(f"  MISSING {len(self.missing)} keys the model needs: {summarize_keys(self.missing, 6)}")
        if self.unexpected:
            lines.append(f"  UNEXPECTED {len(self.unexpected)} keys the model has no place for: "
                         f"{summarize_keys(self.unexpected, 6)}")
        return "\n".join(lines)


def report_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], *, source: str, loaded: int = 0,
                        ignored: Optional[Mapping[str, list]] = None, hint: str = "",
                        raise_on_error: bool = True) -> KeyReport:
    """Build a :class:`KeyReport`, log it, and raise :class:`KeyMismatchError` if any key is unexplained."""
    report = KeyReport(source=source, loaded=loaded, missing=sorted(missing), unexpected=sorted(unexpected),
                       ignored={k: sorted(v) for k, v in (ignored or {}).items() if v})
    logger.info(report.describe())
    if raise_on_error and not report.ok:
        message = report.describe()
        if hint:
            message += f"\n{hint}"
        raise KeyMismatchError(message)
    return report


def load_state_dict_checked(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                            ignored: Optional[Mapping[str, list]] = None, hint: str = "") -> KeyReport:
    """``module.load_state_dict`` that reports every key and raises on any missing/unexpected one.

    Shape mismatches are reported with the file name too (torch raises them even with strict=False).
    """
    try:
        result = module.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as exc:
        raise KeyMismatchError(f"{source}: tensors do not fit {type(module).__name__}: {exc}"
                               + (f"\n{hint}" if hint else "")) from exc
    loaded = len(state_dict) - len(result.unexpected_keys)
    return report_key_mismatch(result.missing_keys, result.unexpected_keys, source=source, loaded=loaded,
                               ignored=ignored, hint=hint)
