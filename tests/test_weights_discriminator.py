"""The released discriminator (``loss.discriminator.*``): kept by step2's conversion, loaded into stage 1.

A tiny VA-VAE and a small PatchGAN are written in the released layout (Lightning training state_dict, pickled
extras); step2 converts them offline (--trust_pickle), then stage 1's init code reads the conversion.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from omegaconf import OmegaConf

from microdoppler_finetune.utils.hub import forget_probes
from microdoppler_finetune.weights.download import download_pretrained
from microdoppler_finetune.weights.index import INDEX_NAME
from microdoppler_finetune.weights.registry import VAVAE_CONVERTED_NAME
from models.checkpoints import KeyMismatchError, read_safetensors
from models.discriminator import create_discriminator
from models.vavae import create_vavae, load_vavae
from vae_training.builders import find_pretrained_vae, init_discriminator

RELEASE = "vavae-imagenet256-f16d32-dinov2.pt"
DISC_REASON = "PatchGAN discriminator of the official training loss"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    forget_probes()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MDF_PRETRAINED_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MDF_KAGGLE_INPUT", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("MDF_KAGGLE_WORKING", str(tmp_path / "kaggle_working"))
    yield tmp_path
    forget_probes()


def released_discriminator() -> dict:
    """A small PatchGAN (ndf 8, 2 layers) with distinctive weights and BatchNorm statistics, released names."""
    torch.manual_seed(3)
    disc = create_discriminator("tiny")
    with torch.no_grad():
        for name, tensor in disc.state_dict().items():
            if tensor.is_floating_point():
                value = torch.randn_like(tensor)
                tensor.copy_(value.abs() + 0.1 if "running_var" in name else value)
            else:
                tensor.fill_(1234)  # num_batches_tracked
    return {f"loss.discriminator.{k}": v.clone() for k, v in disc.state_dict().items()}


def write_release(folder: Path, with_discriminator: bool) -> dict:
    state = create_vavae("test").to_ldm_state_dict()
    state["foundation_model.model.cls_token"] = torch.zeros(1, 1, 8)
    state["loss.logvar"] = torch.zeros(())
    disc = released_discriminator() if with_discriminator else {}
    state.update(disc)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(embed_dim=4)}, folder / RELEASE)
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}, folder / "latents_stats.pt")
    return disc


def convert(tmp_path: Path, logs: list):
    result = download_pretrained(["vavae"], cache_dir=tmp_path / "cache", local_dirs=[tmp_path / "release"],
                                 trust_pickle=True, log=logs.append)
    assert result.ok
    return result.ready["vavae"]


def test_conversion_keeps_the_released_discriminator_and_stage_1_loads_it(offline, capsys):
    tmp_path = offline
    disc = write_release(tmp_path / "release", with_discriminator=True)
    logs = []
    converted = convert(tmp_path, logs)
    assert converted == tmp_path / "cache" / "vavae" / VAVAE_CONVERTED_NAME

    tensors, metadata = read_safetensors(converted)
    assert all(torch.equal(tensors[k], v) for k, v in disc.items())
    assert not any(k.startswith(("foundation_model.", "loss.logvar")) for k in tensors)
    recorded = json.loads((tmp_path / "cache" / INDEX_NAME).read_text())["items"]["vavae"]["discriminator"]
    assert recorded == {"prefix": "loss.discriminator.", "tensors": len(disc),
                        "config": {"in_channels": 3, "ndf": 8, "num_layers": 2}}
    assert json.loads(metadata["discriminator"]) == recorded and metadata["conversion_version"] == "2"

    # The VA-VAE loader accounts for the discriminator's keys too (ignored, with the reason).
    report = load_vavae(converted).load_report
    reason = next(r for r in report.ignored if DISC_REASON in r)
    assert sorted(report.ignored[reason]) == sorted(disc)

    # Stage 1 (init_from pretrained) starts from the conversion and carries the discriminator over.
    cfg = OmegaConf.create({"vae": {"pretrained_path": None}})
    assert find_pretrained_vae(cfg) == converted
    stage_disc = create_discriminator("tiny")
    capsys.readouterr()
    note = init_discriminator(stage_disc, converted, released=True)
    for key, value in stage_disc.state_dict().items():
        assert torch.equal(value, disc[f"loss.discriminator.{key}"]), key
    assert note == f"discriminator: {len(disc)} tensors from {converted} (loss.discriminator.*)"
    printed = capsys.readouterr().out
    assert f"{len(disc)} tensors loaded" in printed and "not the discriminator" in printed

    # A discriminator of another size is an error naming the file, not a silent random init.
    with pytest.raises(KeyMismatchError, match=VAVAE_CONVERTED_NAME):
        init_discriminator(create_discriminator("patchgan"), converted, released=True)


def test_release_without_discriminator_gives_a_logged_random_init(offline, capsys):
    tmp_path = offline
    write_release(tmp_path / "release", with_discriminator=False)
    logs = []
    converted = convert(tmp_path, logs)
    assert any("holds no discriminator" in line for line in logs)
    assert json.loads((tmp_path / "cache" / INDEX_NAME).read_text())["items"]["vavae"]["discriminator"] is None
    stage_disc = create_discriminator("tiny")
    before = {k: v.clone() for k, v in stage_disc.state_dict().items()}
    capsys.readouterr()
    note = init_discriminator(stage_disc, converted, released=True)
    assert note.startswith("discriminator: random init") and "loss.discriminator." in note
    assert "RANDOM INIT" in capsys.readouterr().out.upper()
    assert all(torch.equal(before[k], v) for k, v in stage_disc.state_dict().items())


def test_an_older_conversion_is_redone_to_keep_the_discriminator(offline):
    tmp_path = offline
    disc = write_release(tmp_path / "release", with_discriminator=True)
    converted = convert(tmp_path, [])
    index_path = tmp_path / "cache" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["items"]["vavae"]["converted"]["conversion_version"] = 1  # as written before the discriminator was kept
    index_path.write_text(json.dumps(index))
    logs = []
    assert convert(tmp_path, logs) == converted
    assert any("converting again" in line for line in logs)
    assert json.loads(index_path.read_text())["items"]["vavae"]["converted"]["conversion_version"] == 2
    assert set(disc) <= set(read_safetensors(converted)[0])


def test_a_partial_discriminator_is_reported_and_not_kept(offline):
    """The official reference file carries a single loss.discriminator key: not a PatchGAN, said in the log."""
    tmp_path = offline
    shared = Path(os.environ.get("MDF_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    official = shared / "reference" / "official_outputs" / "vavae_tiny_official.pt"
    if not official.is_file():
        pytest.skip(f"official reference file {official} is absent (set MDF_SHARED_DIR)")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / RELEASE).write_bytes(official.read_bytes())
    torch.save({"mean": torch.zeros(1, 32, 1, 1), "std": torch.ones(1, 32, 1, 1)},
               tmp_path / "release" / "latents_stats.pt")
    logs = []
    converted = convert(tmp_path, logs)
    assert any("not a PatchGAN" in line for line in logs)
    assert not any(k.startswith("loss.") for k in read_safetensors(converted)[0])
