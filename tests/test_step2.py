"""step2: finding, verifying, converting and indexing pretrained weights; failing fast offline.

No test touches the network: subprocesses run with HF_HUB_OFFLINE=1 or with the Hub endpoint pointed at a
closed local port, and in-process runs are in huggingface_hub's offline mode with a Hugging Face cache in tmp_path
(the Hub's answers, where a test needs them, come from a local folder).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from microdoppler_finetune.utils.files import file_sha256
from microdoppler_finetune.utils.hub import forget_probes
from microdoppler_finetune.weights.download import download_pretrained
from microdoppler_finetune.weights.hub import HubAccess
from microdoppler_finetune.weights.index import INDEX_NAME
from microdoppler_finetune.weights.locate import find_pretrained
from microdoppler_finetune.weights.registry import VAVAE_CONVERTED_NAME, resolve_name
from microdoppler_finetune.weights.verify import VerificationError
from models.checkpoints import PickleRefusedError, read_safetensors_metadata
from models.vavae import create_vavae, load_vavae

REPO = Path(__file__).resolve().parents[1]
STEP2 = REPO / "microdoppler_finetune" / "step2_download_models.py"
RELEASE = "vavae-imagenet256-f16d32-dinov2.pt"


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Kaggle roots and caches inside tmp_path; huggingface_hub offline (in this process and in subprocesses)."""
    env = {
        "MDF_KAGGLE_INPUT": str(tmp_path / "kaggle_input"),
        "MDF_KAGGLE_WORKING": str(tmp_path / "kaggle_working"),
        "MDF_PRETRAINED_DIR": str(tmp_path / "pretrained_default"),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "kaggle_input").mkdir()
    forget_probes()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    yield env
    forget_probes()


def put_in_hf_cache(cache_root: Path, repo_id: str, filename: str, data: bytes, blob_name=None) -> Path:
    """A file the way hf_hub_download leaves it: blobs/<sha256>, snapshots/<commit>/<name> -> blob, refs/main."""
    repo = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = repo / "blobs" / (blob_name or hashlib.sha256(data).hexdigest())
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return link


def run_step2(args, env_overrides, timeout=60):
    env = dict(os.environ, **env_overrides)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    return proc, time.monotonic() - started


def test_offline_run_fails_fast_naming_files_and_alternatives(tmp_path, isolated_env):
    proc, seconds = run_step2([str(STEP2), "--kaggle", "--what", "vavae,dinov2", "--cache_dir", str(tmp_path / "c")],
                              isolated_env)
    assert proc.returncode != 0 and seconds < 30
    message = proc.stderr
    for needed in (RELEASE, "latents_stats.pt", "model.safetensors", "--local_dir", "input", "HF_HUB_OFFLINE"):
        assert needed in message, needed


def test_unreachable_hub_fails_fast_too(tmp_path, isolated_env):
    env = dict(isolated_env, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")  # closed port: refused at once
    proc, seconds = run_step2(["-m", "microdoppler_finetune.step2_download_models", "--what", "lightningdit-xl",
                               "--cache_dir", str(tmp_path / "c"), "--timeout", "3"], env)
    assert proc.returncode != 0 and seconds < 30
    assert "lightningdit-xl-imagenet256-800ep.pt" in proc.stderr and "cannot reach" in proc.stderr


def test_help_works_as_module_and_script(isolated_env):
    for args in (["-m", "microdoppler_finetune.step2_download_models", "--help"], [str(STEP2), "--help"]):
        proc, _ = run_step2(args, isolated_env)
        assert proc.returncode == 0 and "--trust_pickle" in proc.stdout


# ----------------------------------------------------------------------------------- local files, conversion


def write_release_like_files(folder: Path):
    """A small VA-VAE in the released layout and pickle format (Lightning extras), plus latents_stats.pt."""
    model = create_vavae("test")
    state = model.to_ldm_state_dict()
    state["foundation_model.model.cls_token"] = torch.zeros(1, 1, 8)
    state["loss.logvar"] = torch.zeros(())
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(embed_dim=4)}, folder / RELEASE)
    torch.save({"mean": torch.arange(4.0).view(1, 4, 1, 1), "std": torch.full((1, 4, 1, 1), 3.0)},
               folder / "latents_stats.pt")
    return model


def test_kaggle_input_is_found_verified_converted_and_indexed(tmp_path, isolated_env):
    kaggle_copy = tmp_path / "kaggle_input" / "some-dataset" / "weights"  # any dataset name, nested
    model = write_release_like_files(kaggle_copy)
    cache = tmp_path / "cache"

    # Offline, the copy's hash cannot be checked against the Hub: unpickling needs --trust_pickle.
    with pytest.raises(PickleRefusedError, match="--trust_pickle"):
        download_pretrained(["vavae"], cache_dir=cache, kaggle=True, log=lambda _: None)

    logs = []
    result = download_pretrained(["vavae"], cache_dir=cache, kaggle=True, trust_pickle=True, log=logs.append)
    assert result.ok
    converted = cache / "vavae" / VAVAE_CONVERTED_NAME
    assert result.ready["vavae"] == converted and find_pretrained("vavae", cache) == converted
    meta = read_safetensors_metadata(converted)
    assert json.loads(meta["latents_std"]) == [3.0] * 4 and meta["format"] == "ldm-vavae"
    stats = json.loads((cache / "vavae" / "latents_stats.json").read_text())
    assert stats["mean"] == [0.0, 1.0, 2.0, 3.0]

    index = json.loads((cache / INDEX_NAME).read_text())
    record = index["items"]["vavae"]["files"][RELEASE]
    assert record["origin"] == "kaggle-input" and record["sha256_source"] == "first-use" and len(record["sha256"]) == 64

    # Later steps load the conversion without any unpickling, and get the same model.
    loaded = load_vavae(converted)
    assert loaded.config.latents_mean == [0.0, 1.0, 2.0, 3.0]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    # A second run reuses the verified conversion without re-hashing or unpickling.
    logs.clear()
    again = download_pretrained(["vavae"], cache_dir=cache, kaggle=True, log=logs.append)
    assert again.ok and not any("hashing" in line for line in logs)


class FakeHub(HubAccess):
    """The Hub's answers (metadata, downloads into the HF cache) served from a local folder, without a network."""

    def __init__(self, folder: Path, wrong_hash: bool = False):
        super().__init__()
        self.folder, self.wrong_hash, self.downloads = folder, wrong_hash, []

    def reachable(self):
        return True

    def metadata(self, remote):
        path = self.folder / remote.filename
        sha = "0" * 64 if self.wrong_hash else file_sha256(path)
        return {"size": path.stat().st_size, "sha256": sha}

    def download(self, remote):
        self.downloads.append(remote.filename)
        return put_in_hf_cache(huggingface_hub.constants.HF_HUB_CACHE, remote.repo_id, remote.filename,
                               (self.folder / remote.filename).read_bytes())


def test_downloads_verified_by_the_hub_are_converted_without_trust_flag(tmp_path, isolated_env, monkeypatch):
    write_release_like_files(tmp_path / "hub")
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr("microdoppler_finetune.weights.download.HubAccess", lambda **_: fake)
    result = download_pretrained(["vavae"], cache_dir=tmp_path / "cache", log=lambda _: None)
    assert result.ok and (tmp_path / "cache" / "vavae" / VAVAE_CONVERTED_NAME).is_file()
    assert fake.downloads == [RELEASE, "latents_stats.pt"]
    record = json.loads((tmp_path / "cache" / INDEX_NAME).read_text())["items"]["vavae"]["files"][RELEASE]
    assert record["sha256_source"] == "hub" and record["origin"] == "hub"
    # The download lives once, in the Hugging Face cache; our cache folder holds only derived data.
    assert Path(record["path"]).is_relative_to(Path(huggingface_hub.constants.HF_HUB_CACHE))
    assert not list((tmp_path / "cache").rglob("*.pt"))

    # Another machine (empty HF cache) whose download does not match the Hub's sha256.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "other_hf_cache"))
    monkeypatch.setattr("microdoppler_finetune.weights.download.HubAccess",
                        lambda **_: FakeHub(tmp_path / "hub", wrong_hash=True))
    with pytest.raises(VerificationError, match="Hugging Face Hub"):
        download_pretrained(["vavae"], cache_dir=tmp_path / "other", log=lambda _: None)


def test_changed_file_fails_verification_against_the_recorded_hash(tmp_path, isolated_env):
    local = tmp_path / "weights"
    (local / "timm").mkdir(parents=True)
    dinov2 = local / "timm" / "model.safetensors"
    dinov2.write_bytes(b"0" * 1000)
    (local / "timm" / "config.json").write_text(json.dumps({"architecture": "vit_large_patch14_dinov2"}))
    cache = tmp_path / "cache"
    result = download_pretrained(["dinov2"], cache_dir=cache, local_dirs=[local], log=lambda _: None)
    assert result.ok and find_pretrained("dinov2", cache) == dinov2

    dinov2.write_bytes(b"1" * 1000)  # same size, other content
    with pytest.raises(VerificationError, match="sha256"):
        download_pretrained(["dinov2"], cache_dir=cache, local_dirs=[local], rehash=True, log=lambda _: None)
    dinov2.write_bytes(b"1" * 10)
    with pytest.raises(VerificationError, match="size"):
        download_pretrained(["dinov2"], cache_dir=cache, local_dirs=[local], log=lambda _: None)


def test_generic_file_names_need_a_matching_folder(tmp_path, isolated_env):
    other = tmp_path / "weights" / "resnet"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"x")
    (other / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    result = download_pretrained(["dinov2"], cache_dir=tmp_path / "cache", local_dirs=[tmp_path / "weights"],
                                 log=lambda _: None)
    assert not result.ok and result.missing[0].remote.filename == "model.safetensors"
    assert find_pretrained("dinov2", tmp_path / "cache") is None


def test_names_and_aliases():
    assert resolve_name("lightningdit-xl") == "lightningdit-xl-800ep" and resolve_name("VAVAE") == "vavae"
    with pytest.raises(KeyError, match="Known"):
        resolve_name("sd-vae")


def test_remove_pickled_deletes_the_downloaded_release_from_the_hf_cache(tmp_path, isolated_env, monkeypatch):
    write_release_like_files(tmp_path / "hub")
    monkeypatch.setattr("microdoppler_finetune.weights.download.HubAccess", lambda **_: FakeHub(tmp_path / "hub"))
    result = download_pretrained(["vavae"], cache_dir=tmp_path / "cache", remove_pickled=True, log=lambda _: None)
    assert result.ok
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--hustvl--vavae-imagenet256-f16d32-dinov2"
    assert not list(repo.rglob(RELEASE)) and len(list((repo / "blobs").iterdir())) == 1  # latents_stats.pt stays
    # Offline afterwards, the conversion is all later steps need.
    again = download_pretrained(["vavae"], cache_dir=tmp_path / "cache", log=lambda _: None)
    assert again.ok and again.ready["vavae"] == tmp_path / "cache" / "vavae" / VAVAE_CONVERTED_NAME
