"""Export of the VA-VAE for the DiT, the latent cache and its refusal of foreign latents, and step5 end to end."""
from __future__ import annotations

import json

import pytest
import torch

from microdoppler_finetune.latents import cache as C
from microdoppler_finetune.latents import export as E
from microdoppler_finetune.utils.files import file_sha256
from models.vavae import VAVAE, create_vavae

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def tiny_vae() -> VAVAE:
    torch.manual_seed(0)
    return create_vavae("test").eval()  # f2, 4 latent channels, ~0.2 M parameters


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(6, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1


def _items(images: torch.Tensor) -> list[dict]:
    """What MicroDopplerDataset yields, for the encoder (manifest rows 10, 11, ...)."""
    return [{"image": im, "person_id": i % 3, "condition_id": i % 2, "index": 10 + i} for i, im in enumerate(images)]


def _export(model, folder, channels):
    return E.export_encoder_for_dit(model, folder, latents_mean=[0.5 + i for i in range(channels)],
                                    latents_std=[2.0 + i for i in range(channels)],
                                    info={"source_checkpoint": "memory"})


def test_export_loads_with_one_call_and_encodes_identically(tmp_path, tiny_vae, images):
    folder = _export(tiny_vae, tmp_path / "export" / E.EXPORT_DIRNAME, 4)
    loaded = VAVAE.from_pretrained(folder).eval()
    assert loaded.config.latents_mean == [0.5, 1.5, 2.5, 3.5]
    assert loaded.config.latents_std == [2.0, 3.0, 4.0, 5.0]
    assert tiny_vae.config.latents_mean is None  # the caller's model is left as it was
    assert E.vae_identity(loaded) == E.vae_identity(tiny_vae) == E.read_export_info(folder)["vae_identity"]
    with torch.no_grad():
        original, reloaded = tiny_vae.encode(images), loaded.encode(images)
        assert torch.equal(original.mean, reloaded.mean) and torch.equal(original.std, reloaded.std)
        generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        assert torch.equal(tiny_vae.encode_latents(images, generator=generator()),
                           loaded.encode_latents(images, generator=generator()))
    # The statistics travel with the model: normalising needs nothing else.
    z = torch.ones(1, 4, 2, 2)
    torch.testing.assert_close(loaded.normalize_latents(z)[0, :, 0, 0], torch.tensor([0.25, -0.5 / 3, -0.375, -0.5]))


def test_export_loads_as_a_plain_autoencoderkl_with_the_same_decode(tmp_path, tiny_vae, images):
    from diffusers import AutoencoderKL

    folder = _export(tiny_vae, tmp_path / E.EXPORT_DIRNAME, 4)
    plain = AutoencoderKL.from_pretrained(folder / E.AUTOENCODER_SUBFOLDER).eval()
    assert plain.config.latents_mean == [0.5, 1.5, 2.5, 3.5] and plain.config.scaling_factor == 1.0
    with torch.no_grad():
        z = tiny_vae.encode(images).mode()
        torch.testing.assert_close(plain.encode(images).latent_dist.mode(), z, rtol=0, atol=1e-6)
        torch.testing.assert_close(plain.decode(z).sample, tiny_vae.decode(z), rtol=0, atol=1e-5)


def test_export_refuses_to_replace_a_foreign_folder_and_replaces_its_own(tmp_path, tiny_vae):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a step5 export"):
        _export(tiny_vae, foreign, 4)
    folder = _export(tiny_vae, tmp_path / "export", 4)
    other = create_vavae("test")
    _export(other, folder, 4)  # a second export replaces the first as a whole
    assert E.read_export_info(folder)["vae_identity"] == E.vae_identity(other) != E.vae_identity(tiny_vae)
    with pytest.raises(ValueError, match="channels"):
        E.export_encoder_for_dit(tiny_vae, tmp_path / "x", latents_mean=[0.0] * 3, latents_std=[1.0] * 3)


def test_identity_depends_on_every_weight(tiny_vae):
    changed = create_vavae("test")
    changed.load_state_dict(tiny_vae.state_dict())
    assert E.vae_identity(changed) == E.vae_identity(tiny_vae)
    with torch.no_grad():
        changed.decoder.conv_out.bias[0] += 1e-6
    assert E.vae_identity(changed) != E.vae_identity(tiny_vae)


def _write_cache(tmp_path, model, images, manifest, *, shard_size=4, flip=False):
    encoded = {split: C.encode_split(model, _items(images), split, sample_seed=7, batch_size=4, flip_copies=flip)
               for split in ("train", "val")}
    return C.write_latent_cache(encoded, tmp_path / "latents", vae_identity_hash=E.vae_identity(model),
                                manifest_path=manifest, image_size=IMAGE_SIZE, latents_mean=[0.0] * 4,
                                latents_std=[1.0] * 4, sample_seed=7, flip=flip, shard_size=shard_size), encoded


@pytest.fixture()
def manifest(tmp_path):
    path = tmp_path / "dataset" / "manifest.csv"
    path.parent.mkdir()
    path.write_text("path,person_id,split\nID_1/a.jpg,0,train\n")
    return path


def test_latent_cache_round_trip(tmp_path, tiny_vae, images, manifest):
    info_path, encoded = _write_cache(tmp_path, tiny_vae, images, manifest)
    info = json.loads(info_path.read_text())
    assert [s["file"] for s in info["splits"]["train"]["shards"]] == ["train-00000.safetensors",
                                                                      "train-00001.safetensors"]
    cache = C.load_latent_cache(tmp_path / "latents", expected_vae_identity=tiny_vae, expected_manifest=manifest)
    assert len(cache) == 6 and cache.latents.shape == (6, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert cache.index.tolist() == list(range(10, 16)) and cache.person_id.tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        posterior = tiny_vae.encode(images)
    torch.testing.assert_close(cache.posterior_mean, posterior.mean)
    torch.testing.assert_close(cache.posterior_std, posterior.std)
    # The stored sample is mean + std * eps with eps fixed by the image, not by the batch it was encoded in.
    again = C.encode_split(tiny_vae, _items(images)[::-1], "train", sample_seed=7, batch_size=5)
    torch.testing.assert_close(again.latents.flip(0), cache.latents)
    eps = (cache.latents - cache.posterior_mean) / cache.posterior_std
    assert abs(float(eps.mean())) < 0.2 and 0.8 < float(eps.std()) < 1.2
    item = cache.dataset(resample=True)[0]
    assert item["latent"].shape == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2) and item["index"] == 10
    val = C.load_latent_cache(tmp_path / "latents", expected_vae_identity=E.vae_identity(tiny_vae), split="val")
    assert len(val) == 6


def test_flipped_copies_only_when_asked(tmp_path, tiny_vae, images, manifest):
    _, encoded = _write_cache(tmp_path, tiny_vae, images, manifest, flip=True)
    train = encoded["train"]
    assert len(train) == 12 and train.flipped.tolist() == [0] * 6 + [1] * 6
    with torch.no_grad():
        torch.testing.assert_close(train.posterior_mean[6:], tiny_vae.encode(images.flip(-1)).mean)
    assert len(train.originals()) == 6


def test_latent_cache_refuses_another_encoder_or_manifest(tmp_path, tiny_vae, images, manifest):
    _write_cache(tmp_path, tiny_vae, images, manifest)
    other = create_vavae("test")
    folder = _export(other, tmp_path / "export" / E.EXPORT_DIRNAME, 4)
    for expected in (other, E.vae_identity(other), folder):
        with pytest.raises(C.LatentCacheMismatchError) as error:
            C.load_latent_cache(tmp_path / "latents", expected_vae_identity=expected)
        message = str(error.value)
        assert E.vae_identity(other) in message and E.vae_identity(tiny_vae) in message
        assert "step5_validate_export.py" in message and "--cache" in message
    other_manifest = tmp_path / "other.csv"
    other_manifest.write_text("path,person_id,split\nID_2/b.jpg,1,train\n")
    with pytest.raises(C.LatentCacheMismatchError, match="another manifest"):
        C.load_latent_cache(tmp_path / "latents", expected_vae_identity=tiny_vae, expected_manifest=other_manifest)
    with pytest.raises(FileNotFoundError, match="No latent cache"):
        C.load_latent_cache(tmp_path / "nothing", expected_vae_identity=tiny_vae)


# ------------------------------------------------------------------------------------------- step5 end to end


def _write_dataset(root, persons=3, conditions=("Normal_free", "Backpack_free"), recordings=4, frames=2):
    """Tiny spectrogram-like JPGs in the <condition>/ID_n layout; each person has its own brightness."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for condition in conditions:
        for person in range(1, persons + 1):
            folder = root / condition / f"ID_{person}"
            folder.mkdir(parents=True)
            for recording in range(1, recordings + 1):
                for frame in range(1, frames + 1):
                    pixels = rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 60 + 50 * person
                    Image.fromarray(pixels.astype(np.uint8)).save(
                        folder / f"ID{person}_case{recording}_1_Doppler{frame}.jpg")


def _write_stage(vae_dir, name, model, status, cfg_path_source):
    """A stage folder as vae_training writes it: config.yaml, stage_result.json and a Lightning-style .ckpt."""
    import shutil

    from vae_training.stages import StageFolder, StageResult

    folder = StageFolder(vae_dir, name)
    folder.checkpoints.mkdir(parents=True)
    shutil.copy(cfg_path_source, folder.config_file)
    with open(folder.config_file, "a") as handle:  # the trainer records the stage's schedule row at top level
        handle.write(f"stage:\n  name: {name}\n  epochs: 1\n")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
              if not k.startswith("_")}
    state = {f"vae.{k}": v for k, v in model.state_dict().items()}
    state["discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)  # the trainer saves its discriminator too
    chosen = folder.checkpoints / "epoch=001-val_psnr=12.34.ckpt"
    torch.save({"state_dict": state, "vavae_config": config, "alignment_target": f"random-init target ({name})"},
               chosen)
    folder.write_result(StageResult(stage=name, status=status, chosen_checkpoint=folder.relative(chosen),
                                    last_checkpoint=None, chosen_metric=12.34, alignment_target=f"target {name}"))
    return chosen


def test_step5_all_from_a_run_folder(tmp_path, monkeypatch):
    from microdoppler_finetune.config import load_config, save_config
    from microdoppler_finetune.data import MicroDopplerDataset, load_manifest, prepare_dataset
    from microdoppler_finetune.evaluation.reconstruction import evaluate_reconstruction
    from microdoppler_finetune.step5_validate_export import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no LPIPS weights: reported, not fatal
    work = tmp_path / "work"
    _write_dataset(tmp_path / "data")
    prepare_dataset(tmp_path / "data", work / "dataset", seed=0, log=None)
    run_config = save_config(load_config("cpu_demo", overrides=["data.image_size=32", f"run.work_dir={work}"]),
                             tmp_path / "run_config.yaml")
    torch.manual_seed(0)
    stage1, stage2, stage3 = (create_vavae("test") for _ in range(3))
    _write_stage(work / "vae", "stage1", stage1, "finished", run_config)
    chosen = _write_stage(work / "vae", "stage2", stage2, "finished", run_config)
    _write_stage(work / "vae", "stage3", stage3, "interrupted", run_config)  # not finished: must not be used

    assert main(["--run", str(work / "vae"), "--all", "--batch_size", "8",
                 "--set", "export.lpips_download=false"]) == 0

    out = work / "validation" / "stage2_epoch_001-val_psnr_12.34"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(chosen.resolve()) and metrics["vae_identity"] == E.vae_identity(stage2)
    assert set(metrics["splits"]) == {"val", "test"} and not metrics["lpips_available"]
    assert set(metrics["splits"]["val"]["per_person"]) == {"ID_1", "ID_2", "ID_3"}
    assert set(metrics["splits"]["val"]["per_condition"]) == {"Normal_free", "Backpack_free"}
    assert "LPIPS: unavailable" in (out / "metrics.md").read_text()
    assert (out / "reconstruction_results.png").is_file() and (out / "latent_map.png").is_file()
    # Deterministic and correct: the same numbers from the posterior mode of the loaded weights.
    manifest = load_manifest(work / "dataset")
    records = evaluate_reconstruction(lambda x: stage2.decode(stage2.encode(x).mode()),
                                      MicroDopplerDataset(manifest, "val", image_size=IMAGE_SIZE), batch_size=5)
    assert metrics["splits"]["val"]["overall"]["psnr"] == pytest.approx(sum(records.psnr) / len(records), abs=1e-9)

    stats = json.loads((out / "latent_statistics.json").read_text())
    assert len(stats["latents_mean"]) == 4 and stats["num_images"] == 24
    assert 0.0 <= stats["person_separability"]["flat"]["accuracy"] <= 1.0

    export_dir = work / "export" / E.EXPORT_DIRNAME
    exported = VAVAE.from_pretrained(export_dir)
    assert exported.config.latents_mean == pytest.approx(stats["latents_mean"])
    info = E.read_export_info(export_dir)
    assert info["vae_identity"] == E.vae_identity(stage2) and info["alignment_target"] == "target stage2"
    assert info["source_sha256"] == file_sha256(chosen) and info["metrics_summary"]["splits"]["test"]["count"] == 12

    cache = C.load_latent_cache(work / "latents", expected_vae_identity=export_dir,
                                expected_manifest=work / "dataset")
    assert len(cache) == 24 and cache.info["image_size"] == IMAGE_SIZE and cache.info["complete"]
    assert sorted(cache.index.tolist()) == [e["index"] for e in manifest.entries_for("train")]
    # The statistics in the export are those of the cached training samples.
    torch.testing.assert_close(cache.latents.mean(dim=(0, 2, 3)), cache.latents_mean, rtol=0, atol=1e-5)
    with pytest.raises(C.LatentCacheMismatchError):
        C.load_latent_cache(work / "latents", expected_vae_identity=stage1)
    summary = (work / "validation" / "summary.md").read_text()
    assert "stage2_epoch_001-val_psnr_12.34 | val | 12 |" in summary


def test_run_folder_without_a_finished_stage_is_refused(tmp_path):
    from microdoppler_finetune.config import load_config, save_config
    from microdoppler_finetune.workflow.validate_export import choose_from_run

    run_config = save_config(load_config("cpu_demo"), tmp_path / "run_config.yaml")
    _write_stage(tmp_path / "vae", "stage1", create_vavae("test"), "interrupted", run_config)
    with pytest.raises(RuntimeError, match="No finished stage.*stage1: interrupted"):
        choose_from_run(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match="run step4 first"):
        choose_from_run(tmp_path)


def test_step5_script_runs_as_a_file_and_as_a_module():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for command in (["microdoppler_finetune/step5_validate_export.py"],
                    ["-m", "microdoppler_finetune.step5_validate_export"]):
        done = subprocess.run([sys.executable, *command, "--help"], cwd=repo, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert "--checkpoint" in done.stdout and "--cache" in done.stdout
