"""Checking a file's size and sha256 against what it should be, and recording what was seen.

What a released file must look like comes from, best first: constants in the registry; the Hub's metadata (for
LFS files the ETag is the sha256); the ETag huggingface_hub named its cached copy after; the record an earlier
run wrote into ``pretrained_index.json`` (trust on first use: the first run records what it saw).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from microdoppler_finetune.utils.files import file_sha256
from microdoppler_finetune.weights.registry import RemoteFile

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Sources whose hash comes from the Hub (or our registry), not from the file itself: a match proves the file is
# the released one, which is what unpickling the VA-VAE release for its conversion requires.
HUB_BACKED_SOURCES = ("registry", "hub", "hf-cache")


def looks_like_sha256(value: Optional[str]) -> bool:
    return bool(value) and bool(_SHA256.match(value.lower()))


class VerificationError(RuntimeError):
    """A file's size or sha256 differs from what it should be."""


@dataclass
class Expected:
    size: Optional[int] = None
    sha256: Optional[str] = None
    source: str = ""  # where the values come from, for messages
    label: str = "first-use"  # what a match proves, stored as the record's sha256_source


def expected_for(remote: RemoteFile, previous: Optional[dict], hub_meta: Optional[dict] = None,
                 cache_etag: Optional[str] = None) -> Expected:
    """What the released file must look like (see the module docstring for the order)."""
    if remote.sha256 or remote.size:
        return Expected(remote.size, remote.sha256, "registry", "registry")
    if hub_meta and (hub_meta.get("sha256") or hub_meta.get("size")):
        return Expected(hub_meta.get("size"), hub_meta.get("sha256"), "Hugging Face Hub metadata", "hub")
    if previous and previous.get("sha256") and previous.get("sha256_source") in HUB_BACKED_SOURCES:
        label = previous["sha256_source"]
        return Expected(previous.get("size"), previous["sha256"], f"recorded by an earlier run, {label}", label)
    if cache_etag:
        return Expected(None, cache_etag, "the ETag the Hub gave when huggingface_hub downloaded it (the cached "
                                          "file's name)", "hf-cache")
    if previous and previous.get("sha256"):
        label = previous.get("sha256_source", "first-use")
        return Expected(previous.get("size"), previous.get("sha256"), f"recorded by an earlier run, {label}", label)
    return Expected()


def file_record(path: Path, origin: str, remote: Optional[RemoteFile], previous: Optional[dict],
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
        sha = file_sha256(path)
    if expected.sha256 and sha != expected.sha256.lower():
        raise VerificationError(f"{path}: sha256 {sha}, expected {expected.sha256} ({expected.source}). The file "
                                f"is corrupt or not the released one; delete it and run step2 again." + recorded_hint)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha,
            "sha256_source": expected.label if expected.sha256 else "first-use", "origin": origin,
            "repo_id": remote.repo_id if remote else None, "filename": remote.filename if remote else path.name,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
