"""Where step2 and later steps find the released files: --local_dir, the Hugging Face cache, Kaggle inputs.

huggingface_hub is in offline mode with its cache in tmp_path; files are written in the layouts the real tools
leave (hf_hub_download's blobs/snapshots/refs, a Kaggle dataset folder).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from microdoppler_finetune.utils.hub import forget_probes
from microdoppler_finetune.weights.download import download_pretrained
from microdoppler_finetune.weights.locate import find_pretrained, hf_cache_file
from microdoppler_finetune.weights.registry import REGISTRY, VAVAE_CONVERTED_NAME
from microdoppler_finetune.weights.verify import VerificationError
from models.vavae import create_vavae

VAVAE_REPO = REGISTRY["vavae"].files[0].repo_id
DINO_REPO = REGISTRY["dinov2"].files[0].repo_id
RELEASE = REGISTRY["vavae"].files[0].filename


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, huggingface_hub offline, Kaggle inputs in tmp_path."""
    forget_probes()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MDF_KAGGLE_INPUT", str(tmp_path / "kaggle_input"))
    monkeypatch.setenv("MDF_KAGGLE_WORKING", str(tmp_path / "kaggle_working"))
    monkeypatch.setenv("MDF_PRETRAINED_DIR", str(tmp_path / "pretrained"))
    (tmp_path / "kaggle_input").mkdir()
    yield tmp_path / "hf"
    forget_probes()


def put_in_hf_cache(root: Path, repo_id: str, filename: str, data: bytes, blob_name=None) -> Path:
    """A file the way hf_hub_download leaves it: blobs/<sha256>, snapshots/<commit>/<name> -> blob, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    blob = repo / "blobs" / (blob_name or hashlib.sha256(data).hexdigest())
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return link


def release_bytes(tmp_path: Path) -> tuple[bytes, bytes]:
    """A tiny VA-VAE in the released layout (pickled Lightning extras) and its latents_stats.pt, as bytes."""
    import argparse

    state = create_vavae("test").to_ldm_state_dict()
    state["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(embed_dim=4)}, tmp_path / "r.pt")
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, tmp_path / "s.pt")
    return (tmp_path / "r.pt").read_bytes(), (tmp_path / "s.pt").read_bytes()


def dinov2_folder(root: Path, content: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architecture": "vit_large_patch14_dinov2"}))
    (root / "model.safetensors").write_bytes(content)
    return root / "model.safetensors"


def test_hf_cache_copy_is_verified_by_its_etag_and_converted_without_the_trust_flag(tmp_path, hf_cache):
    release, stats = release_bytes(tmp_path)
    link = put_in_hf_cache(hf_cache, VAVAE_REPO, RELEASE, release)
    put_in_hf_cache(hf_cache, VAVAE_REPO, "latents_stats.pt", stats)
    assert hf_cache_file(REGISTRY["vavae"].files[0]) == link
    logs = []
    result = download_pretrained(["vavae"], cache_dir=tmp_path / "cache", log=logs.append)
    assert result.ok and result.ready["vavae"] == tmp_path / "cache" / "vavae" / VAVAE_CONVERTED_NAME
    record = json.loads((tmp_path / "cache" / "pretrained_index.json").read_text())["items"]["vavae"]["files"][RELEASE]
    assert record["origin"] == "hf-cache" and record["sha256_source"] == "hf-cache" and record["path"] == str(link)
    assert any("matched the hf-cache value" in line for line in logs)


def test_hf_cache_copy_that_differs_from_its_etag_is_refused(tmp_path, hf_cache):
    release, stats = release_bytes(tmp_path)
    put_in_hf_cache(hf_cache, VAVAE_REPO, RELEASE, release, blob_name="a" * 64)
    put_in_hf_cache(hf_cache, VAVAE_REPO, "latents_stats.pt", stats)
    with pytest.raises(VerificationError, match="ETag"):
        download_pretrained(["vavae"], cache_dir=tmp_path / "cache", log=lambda _: None)


def test_explicit_folder_then_hf_cache_then_kaggle_inputs(tmp_path, hf_cache):
    explicit = dinov2_folder(tmp_path / "mine" / "dinov2", b"explicit")
    cached = put_in_hf_cache(hf_cache, DINO_REPO, "model.safetensors", b"hf-cache")
    attached = dinov2_folder(tmp_path / "kaggle_input" / "any-dataset" / "vit_large_patch14_dinov2", b"kaggle")

    def provided(name, **kwargs):
        result = download_pretrained(["dinov2"], cache_dir=tmp_path / name, kaggle=True, log=lambda _: None,
                                     **kwargs)
        assert result.ok
        return result.ready["dinov2"]

    assert provided("a", local_dirs=[tmp_path / "mine"]) == explicit
    assert provided("b") == cached
    os.unlink(cached)
    assert provided("c") == attached


def test_later_steps_find_files_in_the_hf_cache_and_kaggle_inputs_without_an_index(tmp_path, hf_cache):
    assert find_pretrained("dinov2") is None
    attached = dinov2_folder(tmp_path / "kaggle_input" / "weights" / "vit_large_patch14_dinov2", b"kaggle")
    assert find_pretrained("dinov2") == attached
    cached = put_in_hf_cache(hf_cache, DINO_REPO, "model.safetensors", b"hf-cache")
    assert find_pretrained("dinov2") == cached  # the HF cache comes before Kaggle inputs
