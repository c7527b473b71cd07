"""Export of the VA-VAE for the DiT, the latent cache and its refusal of foreign latents, and step5 end to end."""
from __future__ import annotations

import json

import pytest
import torch

from microdoppler_finetune import export as E
from microdoppler_finetune import latent_cache as C
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
