"""Getting the released weights onto the machine, checking them, and telling later steps where they are.

Sources, in order: our cache folder, folders given with ``--local_dir``, inputs attached to a Kaggle notebook
(searched recursively for the expected file names; no dataset name is assumed), and finally the Hugging Face
Hub through ``hf_hub_download``. Every file is checked: its size and sha256 against the Hub's metadata when
online (for LFS files the Hub's ETag is the sha256), against the values recorded in ``pretrained_index.json``
by an earlier run otherwise (trust on first use: the first run records what it saw), and against
:data:`REGISTRY` constants where those are known.

The released VA-VAE ``.pt`` needs full unpickling (it is a Lightning training checkpoint). It is unpickled
exactly once, here, and only when its hash was verified against the Hub (now or in a recorded earlier run)
or the user passed ``--trust_pickle``; the VA-VAE weights are then written to safetensors (with the latent
statistics in the metadata and in ``latents_stats.json``), and every later step loads that file.

Offline, :func:`download_pretrained` fails within seconds (``HF_HUB_OFFLINE`` is honoured, and a single Hub
probe with a short timeout decides for all files) and says which files are missing and how to provide them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from microdoppler_finetune.environment import kaggle_input_root, kaggle_working_root, running_on_kaggle

PathLike = Union[str, Path]

INDEX_NAME = "pretrained_index.json"
PRETRAINED_DIR_ENV = "MDF_PRETRAINED_DIR"
INDEX_FORMAT_VERSION = 1
VAVAE_CONVERTED_NAME = "vavae-imagenet256-f16d32-dinov2.safetensors"
LATENTS_STATS_JSON = "latents_stats.json"
# The released VA-VAE keys we keep (the training file also holds foundation_model.* and loss.*).
VAVAE_KEEP_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "linear_proj.")
HUB_PROBE_TIMEOUT_S = 10.0


# =========================================================================================== registry


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
    # Extra test for files found locally under a generic name (e.g. 'model.safetensors').
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
# project was written on (no Hub access). They are taken from the Hub's metadata at download time and
# recorded in pretrained_index.json; fill them in here to verify offline copies on first sight.
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


# =========================================================================================== locations


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
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


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


# =========================================================================================== index


def load_index(cache_dir: PathLike) -> dict:
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        return {"format_version": INDEX_FORMAT_VERSION, "items": {}}
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}). Delete it; step2 rebuilds it (files are re-hashed).") from exc
    index.setdefault("items", {})
    return index


def save_index(cache_dir: PathLike, index: dict) -> Path:
    path = Path(cache_dir) / INDEX_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    index["format_version"] = INDEX_FORMAT_VERSION
    index["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def find_pretrained(name: str, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """Where step2 put (or found) a pretrained item; None when it is not available.

    Looks in ``cache_dir`` (default: $MDF_PRETRAINED_DIR, the Kaggle working cache, the local cache), then
    for the expected file names in attached Kaggle inputs. For 'vavae' the safetensors conversion is
    preferred over the pickled release.
    """
    key = resolve_name(name)
    dirs = [Path(cache_dir)] if cache_dir is not None else candidate_cache_dirs()
    for directory in dirs:
        entry = load_index(directory)["items"].get(key) if (directory / INDEX_NAME).is_file() else None
        if entry and entry.get("primary"):
            primary = Path(entry["primary"])
            record = _record_for(entry, primary)
            if primary.is_file() and (record is None or record.get("size") == primary.stat().st_size):
                return primary
        for candidate in _expected_names(key):
            path = directory / key / candidate
            if path.is_file():
                return path
    if running_on_kaggle():
        found = search_tree([kaggle_input_root()], _expected_names(key))
        for candidate in _expected_names(key):
            for path in found.get(candidate, []):
                if _accepts(key, candidate, path):
                    return path
    return None


def _record_for(entry: dict, path: Path) -> Optional[dict]:
    records = list(entry.get("files", {}).values())
    if entry.get("converted"):
        records.append(entry["converted"])
    return next((r for r in records if r.get("path") == str(path)), None)


def _expected_names(key: str) -> list[str]:
    """File names that provide an item, best first (for vavae the conversion beats the pickled release)."""
    item = REGISTRY[key]
    primary = item.files[0]
    names = [VAVAE_CONVERTED_NAME] if key == "vavae" else []
    return names + [primary.filename, *primary.local_names]


def _accepts(key: str, name: str, path: Path) -> bool:
    remote = REGISTRY[key].files[0]
    if name == remote.filename and remote.accept is not None:
        return remote.accept(path)
    return True


# =========================================================================================== hashing


def sha256_file(path: PathLike, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _looks_like_sha256(value: Optional[str]) -> bool:
    return bool(value) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


class VerificationError(RuntimeError):
    """A file's size or sha256 differs from what it should be."""


@dataclass
class Expected:
    size: Optional[int] = None
    sha256: Optional[str] = None
    source: str = ""  # where the values come from, for messages
    label: str = "first-use"  # what a match proves, stored as the record's sha256_source: registry/hub/first-use


def _file_record(path: Path, origin: str, remote: Optional[RemoteFile], previous: Optional[dict],
                 expected: Expected, rehash: bool, log: Callable[[str], None]) -> dict:
    """Size + sha256 of ``path`` checked against ``expected``; ``previous`` (same path) saves re-hashing."""
    stat = path.stat()
    recorded_hint = (" If you replaced the file on purpose, remove its entry from pretrained_index.json (or the "
                     "whole index) so the new file is recorded." if "earlier run" in expected.source else "")
    if expected.size is not None and stat.st_size != expected.size:
        raise VerificationError(f"{path}: size {stat.st_size} bytes, expected {expected.size} ({expected.source}). "
                                f"The file is incomplete or a different file; delete it and run step2 again."
                                + recorded_hint)
    unchanged = (previous is not None and previous.get("path") == str(path) and previous.get("size") == stat.st_size
                 and previous.get("mtime_ns") == stat.st_mtime_ns and previous.get("sha256"))
    if unchanged and not rehash:
        sha = previous["sha256"]
    else:
        log(f"  hashing {path} ({stat.st_size / 1e9:.2f} GB) ...")
        sha = sha256_file(path)
    if expected.sha256 and sha != expected.sha256.lower():
        raise VerificationError(f"{path}: sha256 {sha}, expected {expected.sha256} ({expected.source}). The file "
                                f"is corrupt or not the released one; delete it and run step2 again." + recorded_hint)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha,
            "sha256_source": expected.label if expected.sha256 else "first-use", "origin": origin,
            "repo_id": remote.repo_id if remote else None, "filename": remote.filename if remote else path.name,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _expected_for(remote: RemoteFile, previous: Optional[dict], hub_meta: Optional[dict]) -> Expected:
    """What the released file must look like: registry constants, else the Hub, else an earlier run's record."""
    if remote.sha256 or remote.size:
        return Expected(remote.size, remote.sha256, "registry", "registry")
    if hub_meta and (hub_meta.get("sha256") or hub_meta.get("size")):
        return Expected(hub_meta.get("size"), hub_meta.get("sha256"), "Hugging Face Hub metadata", "hub")
    if previous and previous.get("sha256"):
        label = previous.get("sha256_source", "first-use")
        return Expected(previous.get("size"), previous.get("sha256"),
                        f"recorded by an earlier run, {label}", label)
    return Expected()


# =========================================================================================== hub access


class HubAccess:
    """Decides once whether the Hub can be reached; fetches metadata and files."""

    def __init__(self, timeout: float = HUB_PROBE_TIMEOUT_S, log: Callable[[str], None] = print):
        self.timeout = float(timeout)
        self.log = log
        self._reachable: Optional[bool] = None
        self.reason = ""

    @staticmethod
    def offline_by_environment() -> bool:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
                return True
        return False

    def metadata(self, remote: RemoteFile) -> Optional[dict]:
        """{'size', 'sha256'} from the Hub, or None when offline (first failure marks the Hub unreachable)."""
        if self._reachable is False:
            return None
        if self.offline_by_environment():
            self._reachable, self.reason = False, "HF_HUB_OFFLINE=1 is set"
            return None
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        started = time.monotonic()
        try:
            meta = get_hf_file_metadata(hf_hub_url(remote.repo_id, remote.filename), timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - connection errors differ between huggingface_hub versions
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status < 500:
                raise FileNotFoundError(f"The Hub answered {status} for {remote.url}: {exc}") from exc
            self._reachable = False
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.reason = (f"cannot reach the Hugging Face Hub ({type(exc).__name__}: {text}; "
                           f"{time.monotonic() - started:.1f} s)")
            return None
        self._reachable = True
        etag = (meta.etag or "").strip('"').lower()
        return {"size": meta.size, "sha256": etag if _looks_like_sha256(etag) else None}

    def download(self, remote: RemoteFile, target_dir: Path) -> Path:
        from huggingface_hub import hf_hub_download

        target_dir.mkdir(parents=True, exist_ok=True)
        # local_dir: the file lands at target_dir/filename. A partial download left by an interrupted run is
        # resumed by huggingface_hub versions that keep '.incomplete' files; completed files are never fetched
        # twice (step2 checks its index first).
        return Path(hf_hub_download(repo_id=remote.repo_id, filename=remote.filename, local_dir=str(target_dir),
                                    etag_timeout=self.timeout))


# =========================================================================================== main entry


@dataclass
class MissingFile:
    item: str
    remote: RemoteFile
    target: Path


@dataclass
class DownloadResult:
    cache_dir: Path
    index_path: Optional[Path] = None
    ready: dict = field(default_factory=dict)  # item -> primary path
    missing: list = field(default_factory=list)  # MissingFile
    offline_reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing


def missing_files_message(result: DownloadResult, local_dirs: Sequence[PathLike], kaggle: bool) -> str:
    lines = [f"Missing pretrained files ({result.offline_reason or 'not found'}):"]
    for miss in result.missing:
        lines.append(f"  - [{miss.item}] {miss.remote.filename}  (Hugging Face: {miss.remote.url})")
    lines += [
        "Provide them in one of these ways, then run step2 again:",
        "  * Kaggle: add a dataset or model that contains these files as an input of the notebook (Add Input); "
        f"step2 searches {kaggle_input_root()} recursively for the file names above.",
        "  * Local copy: pass --local_dir DIR (a folder holding the files, searched recursively; repeatable), or put "
        f"each file into {result.cache_dir}/<item>/ (e.g. {result.cache_dir}/vavae/).",
        "  * Internet: run step2 with network access (turn Internet on in the Kaggle notebook settings; unset "
        "HF_HUB_OFFLINE).",
    ]
    if local_dirs:
        lines.append(f"  (searched local dirs: {', '.join(str(d) for d in local_dirs)})")
    if not kaggle:
        lines.append("  (Kaggle inputs were not searched: pass --kaggle on Kaggle.)")
    return "\n".join(lines)


def download_pretrained(what: Sequence[str] = DEFAULT_WHAT, *, cache_dir: Optional[PathLike] = None,
                        kaggle: bool = False, local_dirs: Sequence[PathLike] = (), trust_pickle: bool = False,
                        timeout: float = HUB_PROBE_TIMEOUT_S, rehash: bool = False, remove_pickled: bool = False,
                        log: Callable[[str], None] = print) -> DownloadResult:
    """Make the requested items available in ``cache_dir``, verified and indexed (see the module docstring).

    Returns a :class:`DownloadResult`; files that could not be provided are listed in ``result.missing``
    (the caller decides how to fail: :func:`missing_files_message` explains what to do).
    """
    keys = [resolve_name(w) for w in what]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(kaggle)
    cache.mkdir(parents=True, exist_ok=True)
    index = load_index(cache)
    hub = HubAccess(timeout=timeout, log=log)
    search_roots = [Path(d) for d in local_dirs]
    if kaggle or running_on_kaggle():
        search_roots.append(kaggle_input_root())
    result = DownloadResult(cache_dir=cache)
    wanted_names = {n for k in keys for n in _expected_names(k)} | {f.filename for k in keys for f in REGISTRY[k].files}
    found_locally = search_tree(search_roots, wanted_names) if search_roots else {}

    for key in keys:
        item = REGISTRY[key]
        entry = index["items"].setdefault(key, {"files": {}})
        entry.setdefault("files", {})
        log(f"[{key}] {item.description}")
        if key == "vavae" and _converted_vavae_ready(cache, entry, found_locally, rehash, log):
            result.ready[key] = Path(entry["primary"])
            log(f"[{key}] ready: {entry['primary']}")
            continue
        paths: dict[str, Path] = {}
        for remote in item.files:
            path = _provide_file(key, remote, cache, entry, found_locally, hub, rehash, log)
            if path is None:
                result.missing.append(MissingFile(key, remote, cache / key / remote.filename))
            else:
                paths[remote.filename] = path
        if len(paths) != len(item.files):
            continue
        if key == "vavae":
            entry.update(_convert_vavae(cache, entry, paths, trust_pickle, remove_pickled, log))
        else:
            entry["primary"] = str(paths[item.files[0].filename])
        entry["ready"] = True
        result.ready[key] = Path(entry["primary"])
        log(f"[{key}] ready: {entry['primary']}")
        save_index(cache, index)  # after each item, so an interrupted run keeps what it verified
    result.offline_reason = hub.reason
    result.index_path = save_index(cache, index)
    return result


def _local_candidates(key: str, remote: RemoteFile, cache: Path, previous: Optional[dict],
                      found_locally: dict) -> list[tuple[Path, str]]:
    """Local copies of ``remote``, best first: last run's file, our cache, --local_dir / Kaggle inputs."""
    candidates: list[tuple[Path, str]] = []
    if previous and previous.get("path") and Path(previous["path"]).is_file():
        candidates.append((Path(previous["path"]), previous.get("origin", "cache")))
    cached = cache / key / remote.filename
    if cached.is_file():
        candidates.append((cached, "cache"))
    for name in (remote.filename, *remote.local_names):
        for path in found_locally.get(name, []):
            if name == remote.filename and remote.accept is not None and not remote.accept(path):
                continue
            origin = "kaggle-input" if str(path).startswith(str(kaggle_input_root())) else "local-dir"
            candidates.append((path, origin))
    unique, seen = [], set()
    for path, origin in candidates:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, origin))
    return unique


def _provide_file(key: str, remote: RemoteFile, cache: Path, entry: dict, found_locally: dict,
                  hub: HubAccess, rehash: bool, log: Callable[[str], None]) -> Optional[Path]:
    """A verified local path of ``remote`` (found or downloaded), or None when it cannot be had."""
    previous = entry["files"].get(remote.filename)
    for path, origin in _local_candidates(key, remote, cache, previous, found_locally):
        if path.name == remote.filename:
            # The recorded hash belongs to the content, wherever that copy sits now.
            expected = _expected_for(remote, previous, None)
        else:
            expected = Expected()  # another format of the same weights (e.g. Meta's DINOv2 .pth): hash recorded only
        same_path = previous if previous and previous.get("path") == str(path) else None
        record = _file_record(path, origin, remote, same_path, expected, rehash, log)
        if path.name == remote.filename and record["sha256_source"] == "first-use":
            # Check against the Hub when it is reachable (metadata only, no download).
            meta = hub.metadata(remote)
            if meta and meta.get("sha256"):
                record = _file_record(path, origin, remote, record, _expected_for(remote, None, meta), False, log)
        entry["files"][remote.filename] = record
        log(f"  {remote.filename}: {origin} {path} ({record['size'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]}..., "
            f"{record['sha256_source']})")
        return path
    meta = hub.metadata(remote)
    if meta is None:
        log(f"  {remote.filename}: not found locally; {hub.reason}")
        return None
    size = f"{meta['size'] / 1e9:.2f} GB" if meta.get("size") else "size unknown"
    log(f"  {remote.filename}: downloading from {remote.repo_id} ({size}) into {cache / key} ...")
    path = hub.download(remote, cache / key)
    record = _file_record(path, "hub", remote, None, _expected_for(remote, None, meta), True, log)
    entry["files"][remote.filename] = record
    log(f"  {remote.filename}: downloaded, sha256 {record['sha256'][:12]}... ({record['sha256_source']})")
    return path


# =========================================================================================== VA-VAE conversion


def _converted_vavae_ready(cache: Path, entry: dict, found_locally: dict, rehash: bool,
                           log: Callable[[str], None]) -> bool:
    """The safetensors conversion exists (ours, or attached as an input) and is unchanged since recorded."""
    record = entry.get("converted")
    if record and Path(record["path"]).is_file():
        checked = _file_record(Path(record["path"]), record.get("origin", "cache"), None, record,
                               Expected(record["size"], record["sha256"], "recorded at conversion"), rehash, log)
        checked["source_sha256"] = record.get("source_sha256")
        entry["converted"] = checked
        entry["primary"] = record["path"]
        entry["ready"] = True
        log(f"  {VAVAE_CONVERTED_NAME}: converted earlier from sha256 {str(record.get('source_sha256'))[:12]}...")
        return True
    attached = found_locally.get(VAVAE_CONVERTED_NAME, [])
    if attached:
        path = attached[0]
        origin = "kaggle-input" if str(path).startswith(str(kaggle_input_root())) else "local-dir"
        checked = _file_record(path, origin, None, None, Expected(), rehash, log)
        entry["converted"] = checked
        entry["primary"] = str(path)
        entry["ready"] = True
        log(f"  {VAVAE_CONVERTED_NAME}: using attached conversion {path} (sha256 {checked['sha256'][:12]}..., "
            f"first-use)")
        return True
    return False


def _convert_vavae(cache: Path, entry: dict, paths: dict, trust_pickle: bool, remove_pickled: bool,
                   log: Callable[[str], None]) -> dict:
    """Unpickle the released .pt once (trusted by hash or flag) and write the VA-VAE weights as safetensors."""
    from models.checkpoints import PickleRefusedError, load_torch_file, save_safetensors
    from models.vavae import _json_config, load_vavae_state_dict

    item = REGISTRY["vavae"]
    pt_name, stats_name = item.files[0].filename, item.files[1].filename
    pt_record = entry["files"][pt_name]
    verified = pt_record.get("sha256_source") in ("hub", "registry")
    allow_pickle = verified or trust_pickle
    reason = ("its sha256 matched the Hub's" if verified else "--trust_pickle was given") if allow_pickle else ""
    try:
        content = load_torch_file(paths[pt_name], trust_pickle=allow_pickle)
        stats = load_torch_file(paths[stats_name], trust_pickle=allow_pickle)
    except PickleRefusedError as exc:
        raise PickleRefusedError(
            f"{paths[pt_name]} must be unpickled once to convert it to safetensors, but its sha256 "
            f"({pt_record['sha256'][:16]}...) was never checked against the Hugging Face Hub (it was found locally "
            f"while offline). Either run step2 once with internet access (the Hub's hash is then recorded), or pass "
            f"--trust_pickle if you trust this copy."
        ) from exc
    if allow_pickle:
        log(f"  unpickled {paths[pt_name].name} for conversion ({reason}).")
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{paths[pt_name]}: no 'state_dict' in the file; not the released VA-VAE checkpoint.")
    keep = {k: v for k, v in state.items() if k.startswith(VAVAE_KEEP_PREFIXES)}
    mean, std = stats["mean"].flatten().tolist(), stats["std"].flatten().tolist()
    # Load the kept weights into a model: proves every key maps and records the inferred architecture.
    model = load_vavae_state_dict(keep, source=str(paths[pt_name]), latent_stats=(mean, std))
    log("  " + model.load_report.describe().replace("\n", "\n  "))
    out = cache / "vavae" / VAVAE_CONVERTED_NAME
    metadata = {
        "format": "ldm-vavae",
        "source_file": pt_name,
        "source_sha256": pt_record["sha256"],
        "vavae_config": json.dumps(_json_config(model)),
        "latents_mean": json.dumps(mean),
        "latents_std": json.dumps(std),
    }
    save_safetensors(keep, out, metadata)
    stats_json = cache / "vavae" / LATENTS_STATS_JSON
    stats_json.write_text(json.dumps({"mean": mean, "std": std, "source_file": stats_name,
                                      "source_sha256": entry["files"][stats_name]["sha256"]}, indent=1))
    converted = _file_record(out, "cache", None, None, Expected(), True, log)
    converted["source_sha256"] = pt_record["sha256"]
    log(f"  wrote {out} ({len(keep)} tensors, {converted['size'] / 1e6:.1f} MB) and {stats_json}")
    if remove_pickled and pt_record.get("origin") in ("cache", "hub"):
        paths[pt_name].unlink()
        log(f"  removed {paths[pt_name]} (--remove_pickled); the conversion records its sha256.")
    return {"converted": converted, "primary": str(out), "latents_stats_json": str(stats_json)}
