"""Step 2's work: make the requested items available, verified, converted and indexed; say what is missing.

Each released file is looked for in this order: the folders and files given with ``--local_dir``; the Hugging
Face cache; the inputs attached to a Kaggle notebook (searched recursively by file name; no dataset name is
assumed); where an earlier run recorded it. Only then is it downloaded, with ``hf_hub_download`` into the
Hugging Face cache. Offline (huggingface_hub's offline mode, or a Hub that does not answer one short request)
this fails within seconds and :func:`missing_files_message` says which files are missing and how to provide them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from microdoppler_finetune.environment import kaggle_input_root, running_on_kaggle
from microdoppler_finetune.utils.hub import HUB_PROBE_TIMEOUT_S
from microdoppler_finetune.weights.convert import (
    conversion_outdated,
    convert_vavae,
    converted_vavae_ready,
    remove_release_copy,
)
from microdoppler_finetune.weights.hub import HubAccess
from microdoppler_finetune.weights.index import load_index, save_index
from microdoppler_finetune.weights.locate import (
    default_cache_dir,
    hf_cache_etag,
    hf_cache_file,
    hf_cache_root,
    in_hf_cache,
    origin_of,
    search_tree,
)
from microdoppler_finetune.weights.registry import (
    DEFAULT_WHAT,
    REGISTRY,
    VAVAE_CONVERTED_NAME,
    RemoteFile,
    accepts,
    expected_names,
    resolve_name,
)
from microdoppler_finetune.weights.verify import Expected, expected_for, file_record

PathLike = Union[str, Path]


@dataclass
class MissingFile:
    item: str
    remote: RemoteFile


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
        f"step2 --kaggle searches {kaggle_input_root()} recursively for the file names above.",
        "  * Local copy: pass --local_dir DIR (a folder holding the files, searched recursively; repeatable).",
        "  * Internet: run step2 with network access (turn Internet on in the Kaggle notebook settings; unset "
        f"HF_HUB_OFFLINE). Files are downloaded once into the Hugging Face cache ({hf_cache_root()}), where "
        "copies fetched earlier with huggingface_hub are found too.",
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
    """Make the requested items available, verified and recorded in ``cache_dir``'s index (module docstring).

    Returns a :class:`DownloadResult`; files that could not be provided are listed in ``result.missing``
    (the caller decides how to fail: :func:`missing_files_message` explains what to do).
    """
    keys = [resolve_name(w) for w in what]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(kaggle)
    cache.mkdir(parents=True, exist_ok=True)
    index = load_index(cache)
    hub = HubAccess(timeout=timeout, log=log)
    wanted = {n for k in keys for n in expected_names(k)} | {f.filename for k in keys for f in REGISTRY[k].files}
    explicit = search_tree([Path(d) for d in local_dirs], wanted) if local_dirs else {}
    on_kaggle = search_tree([kaggle_input_root()], wanted) if kaggle or running_on_kaggle() else {}
    result = DownloadResult(cache_dir=cache)

    for key in keys:
        item = REGISTRY[key]
        entry = index["items"].setdefault(key, {"files": {}})
        entry.setdefault("files", {})
        log(f"[{key}] {item.description}")
        if key == "vavae":
            attached = explicit.get(VAVAE_CONVERTED_NAME, []) + on_kaggle.get(VAVAE_CONVERTED_NAME, [])
            if converted_vavae_ready(entry, attached, rehash, log):
                outdated = conversion_outdated(entry)
                if not (outdated and all(_candidates(key, r, cache, entry, explicit, on_kaggle) for r in item.files)):
                    if outdated:
                        log(f"[{key}] note: this conversion predates keeping the released discriminator; give step2 "
                            f"the release (.pt) once more to redo it, or stage 1 starts from a random discriminator.")
                    result.ready[key] = Path(entry["primary"])
                    log(f"[{key}] ready: {entry['primary']}")
                    continue
                log(f"[{key}] converting again: the conversion predates keeping the released discriminator.")
        paths: dict[str, Path] = {}
        for remote in item.files:
            path = _provide_file(key, remote, cache, entry, explicit, on_kaggle, hub, rehash, log)
            if path is None:
                result.missing.append(MissingFile(key, remote))
            else:
                paths[remote.filename] = path
        if len(paths) != len(item.files):
            continue
        if key == "vavae":
            entry.update(convert_vavae(cache, entry, paths, trust_pickle, log))
            pt_name = item.files[0].filename
            if remove_pickled:
                remove_release_copy(paths[pt_name], entry["files"][pt_name].get("origin", ""), log)
        else:
            entry["primary"] = str(paths[item.files[0].filename])
        entry["ready"] = True
        result.ready[key] = Path(entry["primary"])
        log(f"[{key}] ready: {entry['primary']}")
        save_index(cache, index)  # after each item, so an interrupted run keeps what it verified
    result.offline_reason = hub.reason
    result.index_path = save_index(cache, index)
    return result


def _candidates(key: str, remote: RemoteFile, cache: Path, entry: dict, explicit: dict,
                on_kaggle: dict) -> list[tuple[Path, str]]:
    """Local copies of ``remote``, best first: --local_dir, HF cache, Kaggle inputs, an earlier run's record."""
    def named(found: dict) -> list[tuple[Path, str]]:
        return [(p, origin_of(p)) for name in (remote.filename, *remote.local_names) for p in found.get(name, [])
                if accepts(remote, name, p)]

    cached = hf_cache_file(remote)
    candidates = named(explicit) + ([(cached, "hf-cache")] if cached is not None else []) + named(on_kaggle)
    previous = entry["files"].get(remote.filename)
    if previous and previous.get("path") and Path(previous["path"]).is_file():
        candidates.append((Path(previous["path"]), previous.get("origin", "cache")))
    legacy = cache / key / remote.filename  # where earlier versions of step2 downloaded to
    if legacy.is_file():
        candidates.append((legacy, "cache"))
    unique, seen = [], set()
    for path, origin in candidates:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, origin))
    return unique


def _provide_file(key: str, remote: RemoteFile, cache: Path, entry: dict, explicit: dict, on_kaggle: dict,
                  hub: HubAccess, rehash: bool, log: Callable[[str], None]) -> Optional[Path]:
    """A verified local path of ``remote`` (found or downloaded), or None when it cannot be had."""
    previous = entry["files"].get(remote.filename)
    for path, origin in _candidates(key, remote, cache, entry, explicit, on_kaggle):
        same_path = previous if previous and previous.get("path") == str(path) else None
        if path.name == remote.filename:
            # The recorded hash belongs to the content, wherever that copy sits now.
            etag = hf_cache_etag(path) if in_hf_cache(path) else None
            expected = expected_for(remote, previous, None, etag)
        else:
            expected = Expected()  # another format of the same weights (e.g. Meta's DINOv2 .pth): hash recorded only
        record = file_record(path, origin, remote, same_path, expected, rehash, log)
        if path.name == remote.filename and record["sha256_source"] == "first-use":
            meta = hub.metadata(remote)  # check against the Hub when it is reachable (metadata only)
            if meta and meta.get("sha256"):
                record = file_record(path, origin, remote, record, expected_for(remote, None, meta), False, log)
        entry["files"][remote.filename] = record
        log(f"  {remote.filename}: {origin} {path} ({record['size'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]}..., "
            f"{record['sha256_source']})")
        return path
    meta = hub.metadata(remote)
    if meta is None:
        log(f"  {remote.filename}: not found locally; {hub.reason}")
        return None
    size = f"{meta['size'] / 1e9:.2f} GB" if meta.get("size") else "size unknown"
    log(f"  {remote.filename}: downloading from {remote.repo_id} ({size}) into the Hugging Face cache "
        f"{hf_cache_root()} ...")
    path = hub.download(remote)
    record = file_record(path, "hub", remote, None, expected_for(remote, None, meta), True, log)
    entry["files"][remote.filename] = record
    log(f"  {remote.filename}: downloaded to {path}, sha256 {record['sha256'][:12]}... ({record['sha256_source']})")
    return path
