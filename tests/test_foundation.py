"""DINOv2 alignment target (tiny random timm DINOv2-style ViTs) and the foundation feature cache."""
from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.checkpoints import KeyMismatchError
from models.foundation import (
    FoundationFeatureCache,
    FoundationWeightsUnavailable,
    create_foundation_model,
    split_model_name,
)

TINY = dict(depth=2, embed_dim=64, num_heads=2)  # a DINOv2-style ViT-S/14 trunk, shrunk for CPU tests


def tiny_dinov2(latent_size=4, **kwargs):
    torch.manual_seed(0)
    return create_foundation_model("vit_small_patch14_dinov2", pretrained=False, latent_size=latent_size,
                                   model_kwargs=TINY, **kwargs)


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_patch_grid_matches_the_latent_grid(image_size):
    latent = image_size // 16  # f16 VA-VAE
    model = tiny_dinov2(latent)
    x = torch.rand(2, 3, image_size, image_size) * 2 - 1
    features = model(x)
    assert model.input_size == (latent * 14, latent * 14)
    assert features.shape == (2, 64, latent, latent) and model.feature_dim == 64


def test_features_are_final_norm_patch_tokens_of_the_resized_unnormalised_image():
    model = tiny_dinov2(4)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    resized = F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens = model.backbone.forward_features(resized)  # includes the final norm
    expected = tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)  # class token dropped
    assert torch.allclose(model(x), expected, atol=1e-6)

    normed = tiny_dinov2(4, imagenet_norm=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = normed.backbone.forward_features(((resized + 1) / 2 - mean) / std)
    assert torch.allclose(normed(x), tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4), atol=1e-5)
    assert normed.pretrained_cfg["imagenet_norm"] and not model.pretrained_cfg["imagenet_norm"]
    assert model.pretrained_cfg["input_size"] == (3, 56, 56) and model.pretrained_cfg["feature_dim"] == 64


def test_a_coarser_token_grid_is_upsampled_to_the_latent_grid_and_named_in_the_cache_identity():
    fine, coarse = tiny_dinov2(4), tiny_dinov2(4, token_grid=2)  # same weights (same seed)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert coarse.input_size == (28, 28) and fine.input_size == (56, 56)
    resized = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens = coarse.backbone.forward_features(resized)[:, 1:].transpose(1, 2).reshape(2, 64, 2, 2)
    expected = F.interpolate(tokens, size=(4, 4), mode="bilinear", align_corners=False)
    assert coarse(x).shape == fine(x).shape == (2, 64, 4, 4)
    assert torch.allclose(coarse(x), expected, atol=1e-6)
    # Other features than the full grid's, so another cache; the release's grid keeps its old identity.
    assert coarse.cache_identity != fine.cache_identity and "grid=4x4" in coarse.cache_identity
    assert "grid=" not in fine.cache_identity and tiny_dinov2(4, token_grid=4).cache_identity == fine.cache_identity
    assert coarse.pretrained_cfg["token_grid"] == (2, 2) and coarse.pretrained_cfg["latent_size"] == (4, 4)


def test_cached_float16_features_stack_under_cpu_bf16_autocast(tmp_path):
    """The VA-VAE's bf16-mixed CPU training reads float16 cache entries inside autocast (stack refused them)."""
    model = tiny_dinov2(2)
    cache = FoundationFeatureCache.for_model(model, cache_dir=tmp_path, storage_dtype=torch.float16)
    batch = batch_of(["ID_1/a.jpg", "ID_2/b.jpg"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = cache.features_for_batch(batch, batch["image"], model)
        again = cache.features_for_batch(batch, batch["image"], model)
    assert first.shape == (2, 64, 2, 2) and torch.equal(first, again)


def test_register_tokens_are_dropped_too():
    model = create_foundation_model("vit_small_patch14_reg4_dinov2", pretrained=False, latent_size=2,
                                    model_kwargs=TINY)
    assert model.num_prefix_tokens == 5
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 2, 2)


def test_frozen_and_stays_in_eval_mode():
    model = tiny_dinov2(2)
    wrapper = torch.nn.Sequential(model)
    wrapper.train()
    assert not model.training and not model.backbone.training
    assert all(not p.requires_grad for p in model.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert not model(x).requires_grad


def test_local_checkpoint_files_load_strictly(tmp_path):
    source = tiny_dinov2(2)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    loaded = create_foundation_model("vit_small_patch14_dinov2", checkpoint_path=path, latent_size=2,
                                     model_kwargs=TINY)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x), source(x))
    assert loaded.weights.startswith("file:") and loaded.cache_identity == source.cache_identity

    # Meta's original DINOv2 layout (with mask_token) goes through timm's converter.
    meta = dict(source.backbone.state_dict(), mask_token=torch.zeros(1, 64))
    torch.save(meta, tmp_path / "dinov2_pretrain.pth")
    from_meta = create_foundation_model("vit_small_patch14_dinov2", checkpoint_path=tmp_path / "dinov2_pretrain.pth",
                                        latent_size=2, model_kwargs=TINY)
    assert torch.equal(from_meta(x), source(x))

    with pytest.raises(KeyMismatchError, match="width 64"):
        create_foundation_model("vit_small_patch14_dinov2", checkpoint_path=path, latent_size=2,
                                model_kwargs=dict(depth=2, embed_dim=96, num_heads=2))


def test_pretrained_weights_offline_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MDF_PRETRAINED_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FoundationWeightsUnavailable) as error:
        create_foundation_model("vit_small_patch14_dinov2.lvd142m", pretrained=True, latent_size=2)
    message = str(error.value)
    assert "checkpoint_path" in message and "model.safetensors" in message
    assert "huggingface.co/timm/vit_small_patch14_dinov2.lvd142m" in message


def test_unreachable_hub_fails_within_seconds_through_the_shared_helper(tmp_path, monkeypatch):
    from microdoppler_finetune.utils.hub import forget_probes

    forget_probes()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    started = time.monotonic()
    try:
        with pytest.raises(FoundationWeightsUnavailable, match="cannot reach the Hugging Face Hub"):
            create_foundation_model("vit_small_patch14_dinov2.lvd142m", pretrained=True, latent_size=2)
        assert time.monotonic() - started < 10
        assert huggingface_hub.constants.HF_HUB_OFFLINE  # later Hub calls in this process fail at once too
    finally:
        forget_probes()


def test_model_names():
    assert split_model_name("hf-hub:timm/vit_large_patch14_dinov2.lvd142m") == ("vit_large_patch14_dinov2", "lvd142m")
    assert split_model_name("vit_small_patch14_dinov2") == ("vit_small_patch14_dinov2", None)


# ----------------------------------------------------------------------------------- feature cache


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0
        self.cache_identity = model.cache_identity

    def forward(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return self.model(x)


def batch_of(paths, flipped=None):
    batch = {"path": list(paths), "image": torch.rand(len(paths), 3, 32, 32) * 2 - 1}
    if flipped is not None:
        batch["flipped"] = torch.tensor(flipped)
    return batch


def test_cache_hit_returns_identical_features_without_running_the_model(tmp_path):
    model = CountingModel(tiny_dinov2(2))
    cache = FoundationFeatureCache.for_model(model.model, cache_dir=tmp_path)
    batch = batch_of(["ID_1/a.jpg", "ID_2/b.jpg"])
    first = cache.features_for_batch(batch, batch["image"], model)
    assert model.images == 2 and first.shape == (2, 64, 2, 2)
    again = cache.features_for_batch(batch, batch["image"], model)
    assert model.images == 2 and torch.equal(again, first)
    assert (cache.hits, cache.misses) == (2, 2)

    # A mixed batch only computes the new entry; the flip flag is part of the key.
    mixed = batch_of(["ID_1/a.jpg", "ID_3/c.jpg", "ID_1/a.jpg"], flipped=[False, False, True])
    out = cache.features_for_batch(mixed, mixed["image"], model)
    assert model.images == 4 and torch.equal(out[0], first[0])

    # On disk: a new cache instance (another run) hits without computing.
    cache.flush()
    reloaded = FoundationFeatureCache.for_model(model.model, cache_dir=tmp_path, in_memory=False)
    assert len(reloaded) == 4
    assert torch.equal(reloaded.get("ID_2/b.jpg", False), first[1])


def test_cache_keys_include_model_name_and_input_size(tmp_path):
    features = torch.randn(64, 2, 2)
    cache = FoundationFeatureCache("dinov2-a", 28, cache_dir=tmp_path)
    cache.put("ID_1/a.jpg", False, features)
    cache.flush()
    assert torch.equal(FoundationFeatureCache("dinov2-a", 28, cache_dir=tmp_path).get("ID_1/a.jpg"), features)
    assert FoundationFeatureCache("dinov2-b", 28, cache_dir=tmp_path).get("ID_1/a.jpg") is None
    assert FoundationFeatureCache("dinov2-a", 56, cache_dir=tmp_path).get("ID_1/a.jpg") is None
    assert cache.get("ID_1/a.jpg", flip=True) is None

    other = tiny_dinov2(2, imagenet_norm=True)  # another identity than the cache's
    with pytest.raises(ValueError, match="one cache per foundation model"):
        cache.features_for_batch(batch_of(["x"]), torch.zeros(1, 3, 32, 32), other)


def test_cache_requires_flip_flags_when_flipping_is_on():
    model = tiny_dinov2(2)
    cache = FoundationFeatureCache.for_model(model, flip_flag_required=True)
    with pytest.raises(KeyError, match="flipped"):
        cache.features_for_batch(batch_of(["a"]), torch.zeros(1, 3, 32, 32), model)
    half = FoundationFeatureCache.for_model(model, storage_dtype=torch.float16)
    out = half.features_for_batch(batch_of(["a"], [True]), torch.zeros(1, 3, 32, 32), model)
    assert out.dtype == torch.float16 and torch.equal(half.get("a", True), out[0])
