"""VA-VAE model, presets, checkpoint conversion and loading (released LDM layout, Lightning, exported folders)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from models.checkpoints import KeyMismatchError, PickleRefusedError
from models.vavae import (
    VAVAE,
    VAVAE_PRESETS,
    VAVAEOutput,
    block_types,
    checkpoint_filter_fn,
    create_vavae,
    infer_config_from_weights,
    ldm_key_to_ours,
    load_vavae,
    ours_key_to_ldm,
    save_ldm_safetensors,
)


def official_outputs_dir() -> Path:
    """The shared reference folder beside the clone (CI has it), or $MDF_SHARED_DIR/reference/official_outputs."""
    if os.environ.get("MDF_SHARED_DIR"):
        return Path(os.environ["MDF_SHARED_DIR"]) / "reference" / "official_outputs"
    return Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_outputs"


def need_official(name: str) -> Path:
    path = official_outputs_dir() / name
    if not path.is_file():
        pytest.skip(f"official reference file {path} is absent (set MDF_SHARED_DIR to the shared folder)")
    return path


# ----------------------------------------------------------------------------------- the LDM layout, written out
# Key names and shapes of the official LDM Encoder/Decoder (vavae/ldm/modules/diffusionmodules/model.py) for a
# given ddconfig, spelled out independently of models.vavae so the converter is tested against the real layout.
# test_ldm_layout_matches_official_file checks this spelling against the file the official code wrote.


def ldm_vavae_shapes(ch, ch_mult, num_res_blocks, z, attn_levels, foundation_dim, in_ch=3, out_ch=3):
    shapes = {}

    def conv(prefix, cout, cin, k):
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        shapes[f"{prefix}.bias"] = (cout,)

    def norm(prefix, c):
        shapes[f"{prefix}.weight"] = (c,)
        shapes[f"{prefix}.bias"] = (c,)

    def resblock(prefix, cin, cout):
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cout, cin, 3)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.nin_shortcut", cout, cin, 1)

    def attn(prefix, c):
        norm(f"{prefix}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.{part}", c, c, 1)

    def mid(prefix, c):
        resblock(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        resblock(f"{prefix}.mid.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", ch, in_ch, 3)
    in_mult = (1,) + tuple(ch_mult)
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            resblock(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z, block_in, 3)

    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", block_in, z, 3)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i in attn_levels:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", out_ch, block_in, 3)

    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    shapes["linear_proj.weight"] = (foundation_dim, z, 1, 1)
    return shapes


# The released training file also carries these; the loader must drop and report them.
TRAINING_EXTRAS = {
    "foundation_model.model.cls_token": (1, 1, 8),
    "foundation_model.model.blocks.0.attn.qkv.weight": (24, 8),
    "loss.logvar": (),
    "loss.discriminator.main.0.weight": (8, 3, 4, 4),
    "loss.perceptual_loss.net.slice1.0.weight": (8, 3, 3, 3),
}

SMALL_LDM = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z=4, attn_levels=(1,), foundation_dim=16)


def random_state(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


def small_release_state(seed=0, extras=True):
    state = random_state(ldm_vavae_shapes(**SMALL_LDM), seed)
    if extras:
        state.update(random_state(TRAINING_EXTRAS, seed + 1))
    return state


# ----------------------------------------------------------------------------------- official code equivalence


def test_ldm_layout_matches_official_file():
    sd = torch.load(need_official("vavae_tiny_official.pt"), map_location="cpu", weights_only=True)["state_dict"]
    io = torch.load(need_official("vavae_tiny_io.pt"), map_location="cpu", weights_only=True)
    cfg = io["ddconfig"]
    attn_levels = tuple(i for i in range(len(cfg["ch_mult"])) if cfg["resolution"] // 2**i in cfg["attn_resolutions"])
    expected = ldm_vavae_shapes(cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["z_channels"], attn_levels,
                                foundation_dim=sd["linear_proj.weight"].shape[0])
    actual = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith(("foundation_model.", "loss."))}
    assert actual == expected


def test_official_outputs_reproduced():
    io = torch.load(need_official("vavae_tiny_io.pt"), map_location="cpu", weights_only=True)
    model = load_vavae(need_official("vavae_tiny_official.pt"))
    assert model.load_report.ok and model.load_report.ignored  # foundation_model.* and loss.* dropped, reported
    # Each dropped group with its own reason: the discriminator is named as the one stage 1 loads separately.
    by_key = {key: reason for reason, keys in model.load_report.ignored.items() for key in keys}
    assert "init_discriminator" in by_key["loss.discriminator.main.0.weight"]
    assert "logvar" in by_key["loss.logvar"] and "DINOv2" in by_key["foundation_model.model.cls_token"]
    assert not model.training
    with torch.no_grad():
        posterior = model.encode(io["x"])
        xrec = model.decode(posterior.mean)
        proj = model.linear_proj(posterior.mean)
    for name, ours in (("mean", posterior.mean), ("logvar", posterior.logvar), ("xrec", xrec), ("proj", proj)):
        ref = io[name]
        assert ours.shape == ref.shape, name
        tolerance = 1e-4 * max(1.0, ref.abs().max().item())
        error = (ours - ref).abs().max().item()
        assert error < tolerance, f"{name}: max abs error {error:.3g} >= {tolerance:.3g}"


# ----------------------------------------------------------------------------------- released f16d32 layout


def test_release_f16d32_checkpoint_loads_with_every_key_accounted(tmp_path):
    shapes = ldm_vavae_shapes(128, (1, 1, 2, 2, 4), 2, 32, attn_levels=(4,), foundation_dim=1024)
    state = random_state(shapes)
    state.update(random_state(TRAINING_EXTRAS, 1))
    path = tmp_path / "vavae-imagenet256-f16d32-dinov2.pt"
    torch.save({"state_dict": state, "epoch": 49}, path)
    del state

    model = load_vavae(path)
    report = model.load_report
    assert report.ok and report.loaded == len(shapes)
    assert sorted(k for keys in report.ignored.values() for k in keys) == sorted(TRAINING_EXTRAS)
    release = create_vavae("f16d32")  # the preset must describe the released architecture
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "foundation_dim", "down_block_types",
                "up_block_types", "mid_block_add_attention", "in_channels", "out_channels"):
        assert model.config[key] == release.config[key], key
    del release
    counts = model.num_parameters_split()
    assert counts["total"] == sum(torch.Size(s).numel() for s in shapes.values()) == 69_868_835
    assert counts["linear_proj"] == 32 * 1024

    original = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    # Spot checks of the mapping: reversed decoder levels, 1x1 conv -> linear, nin_shortcut, norm_out.
    assert torch.equal(model.decoder.up_blocks[0].attentions[2].to_q.weight,
                       original["decoder.up.4.attn.2.q.weight"][:, :, 0, 0])
    assert torch.equal(model.decoder.up_blocks[1].resnets[0].conv_shortcut.weight,
                       original["decoder.up.3.block.0.nin_shortcut.weight"])
    assert torch.equal(model.decoder.up_blocks[3].upsamplers[0].conv.bias, original["decoder.up.1.upsample.conv.bias"])
    assert torch.equal(model.encoder.conv_norm_out.weight, original["encoder.norm_out.weight"])
    # And back: our LDM export reproduces the file's VA-VAE tensors exactly.
    exported = model.to_ldm_state_dict()
    assert set(exported) == set(shapes)
    assert all(torch.equal(exported[k], original[k]) for k in shapes)


def test_key_rules_round_trip_for_every_parameter():
    model = create_vavae("tiny")
    levels = len(model.config.block_out_channels)
    for key in model.state_dict():
        ldm = ours_key_to_ldm(key, levels)
        assert ldm is not None and ldm_key_to_ours(ldm, levels) == key
    assert ldm_key_to_ours("decoder.up.0.block.2.nin_shortcut.weight", 5) == \
        "decoder.up_blocks.4.resnets.2.conv_shortcut.weight"
    assert ldm_key_to_ours("encoder.mid.attn_1.proj_out.bias", 5) == "encoder.mid_block.attentions.0.to_out.0.bias"
    assert ldm_key_to_ours("encoder.mid.block_2.norm1.weight", 5) == "encoder.mid_block.resnets.1.norm1.weight"
    assert ldm_key_to_ours("loss.logvar", 5) is None


# ----------------------------------------------------------------------------------- converter strictness


def test_converter_drops_training_extras_and_refuses_unexplained_keys():
    state = small_release_state()
    model = VAVAE(**infer_config_from_weights({k: v for k, v in state.items()
                                               if not k.startswith(("foundation_model.", "loss."))}))
    converted = checkpoint_filter_fn(state, model)
    assert set(converted) == set(model.state_dict())

    extra = dict(state, **{"encoder.down.0.block.0.extra.weight": torch.zeros(3)})
    with pytest.raises(KeyMismatchError, match="UNEXPECTED.*encoder.down.0.block.0.extra"):
        checkpoint_filter_fn(extra, model)
    missing = {k: v for k, v in state.items() if k != "decoder.up.1.attn.0.k.weight"}
    with pytest.raises(KeyMismatchError, match="MISSING.*decoder.up_blocks.0.attentions.0.to_k"):
        checkpoint_filter_fn(missing, model)


def test_load_refuses_unexplained_or_missing_keys(tmp_path):
    state = small_release_state()
    state["model_ema.decay"] = torch.tensor(0.999)  # an unknown companion group
    path = tmp_path / "extra.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(KeyMismatchError, match="model_ema.decay"):
        load_vavae(path)

    state = small_release_state()
    del state["post_quant_conv.bias"]
    path = tmp_path / "missing.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(KeyMismatchError, match="post_quant_conv.bias"):
        load_vavae(path)


def test_pickled_checkpoint_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "released_like.pt"
    # Lightning's training files carry Python objects (here: an argparse.Namespace) that need unpickling.
    torch.save({"state_dict": small_release_state(), "hparams": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(PickleRefusedError) as refused:
        load_vavae(path)
    assert str(path) in str(refused.value) and "trust_pickle=True" in str(refused.value)
    assert "--trust_pickle" in str(refused.value)
    model = load_vavae(path, trust_pickle=True)
    assert model.load_report.ok


# ----------------------------------------------------------------------------------- our formats


def test_save_pretrained_round_trip_keeps_config_and_latent_stats(tmp_path):
    model = create_vavae("test")
    model.set_latent_stats(torch.arange(4.0), torch.full((4,), 2.0))
    model.save_pretrained(tmp_path / "export")
    for loaded in (load_vavae(tmp_path / "export"), VAVAE.from_pretrained(tmp_path / "export")):
        assert loaded.config.latents_mean == [0.0, 1.0, 2.0, 3.0] and loaded.config.latents_std == [2.0] * 4
        assert list(loaded.config.block_out_channels) == list(model.config.block_out_channels)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    z = torch.randn(2, 4, 3, 3)
    assert torch.allclose(model.denormalize_latents(model.normalize_latents(z)), z, atol=1e-6)


def test_lightning_checkpoint_with_prefix_config_and_companions(tmp_path):
    model = create_vavae("test", foundation_dim=8)
    state = {f"vae.{k}": v for k, v in model.state_dict().items()}
    state["discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()}
    path = tmp_path / "epoch=001-val_psnr=20.00.ckpt"
    torch.save({"state_dict": state, "vavae_config": config, "pytorch-lightning_version": "2.6.0"}, path)
    loaded = load_vavae(path)
    assert loaded.config.foundation_dim == 8
    assert "discriminator.main.0.weight" in [k for keys in loaded.load_report.ignored.values() for k in keys]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    # Without a stored config, the architecture is inferred from the weight shapes.
    torch.save({"state_dict": state}, path)
    inferred = load_vavae(path)
    assert list(inferred.config.block_out_channels) == [32, 32] and inferred.config.latent_channels == 4
    assert list(inferred.config.down_block_types) == list(model.config.down_block_types)

    # An unknown group beside the VA-VAE is an error unless the prefix is chosen explicitly.
    state["ema.vae.encoder.conv_in.bias"] = torch.zeros(32)
    torch.save({"state_dict": state}, path)
    with pytest.raises(KeyMismatchError, match="prefix"):
        load_vavae(path)
    explicit = load_vavae(path, prefix="vae.")
    assert any("outside the selected prefix" in reason for reason in explicit.load_report.ignored)


def test_ldm_safetensors_export_loads_back_identically(tmp_path):
    model = create_vavae("test")
    model.set_latent_stats([0.1] * 4, [1.5] * 4)
    path = save_ldm_safetensors(model, tmp_path / "vavae.safetensors")
    loaded = load_vavae(path)
    assert loaded.config.latents_std == [1.5] * 4
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ours = model(x, sample=False)
        theirs = loaded(x, sample=False)
    assert torch.equal(ours.reconstruction, theirs.reconstruction)


# ----------------------------------------------------------------------------------- model contract


def test_forward_contract_and_attributes():
    model = create_vavae("test")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, VAVAEOutput)
    assert out.reconstruction.shape == (2, 3, 16, 16)
    assert out.latents.shape == (2, 4, 8, 8) and out.projected.shape == (2, 16, 8, 8)
    assert torch.allclose(out.projected, model.linear_proj(out.latents))
    assert model.downsample_factor == 2 and len(model.encoder_levels) == 2
    assert model.encoder_conv_out_weight is model.encoder.conv_out.weight
    assert model.decoder_conv_out_weight is model.decoder.conv_out.weight
    assert model.config.latent_channels == 4 and model.config.foundation_dim == 16

    # Sampling is the default and follows the generator; mode() on request.
    a = model.encode_latents(x, generator=torch.Generator().manual_seed(1))
    b = model.encode_latents(x, generator=torch.Generator().manual_seed(1))
    posterior = model.encode(x)
    assert torch.equal(a, b) and not torch.equal(a, posterior.mean)
    assert torch.equal(model.encode_latents(x, sample=False), posterior.mode())
    # Log-variance is clamped like the release.
    with torch.no_grad():
        model.quant_conv.bias[4:] = 100.0
    assert model.encode(x).logvar.max().item() == pytest.approx(20.0)

    out.reconstruction.mean().backward()
    assert model.decoder_conv_out_weight.grad is not None


def test_as_autoencoder_kl_decodes_the_same():
    model = create_vavae("test").eval()
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model.as_autoencoder_kl().decode(z).sample, model.decode(z), atol=1e-6)


def test_presets_overrides_and_bad_configs():
    assert set(VAVAE_PRESETS) >= {"f16d32", "tiny"}
    tiny = create_vavae("tiny")
    assert tiny.downsample_factor == 16 and tiny.num_parameters_split()["total"] == 4_501_187
    assert create_vavae("tiny", foundation_dim=384).linear_proj.weight.shape == (384, 32, 1, 1)
    demo = create_vavae("tiny_f4").eval()  # the CPU demo's VA-VAE: 64 px -> 16x16x16 latents
    with torch.no_grad():
        z = demo.encode(torch.zeros(1, 3, 64, 64)).mode()
        assert z.shape == (1, 16, 16, 16) and demo.decode(z).shape == (1, 3, 64, 64)
    with pytest.raises(KeyError, match="tiny"):
        create_vavae("huge")
    with pytest.raises(ValueError, match="not VAVAE arguments"):
        create_vavae("tiny", ch_mult=(1, 2))
    with pytest.raises(ValueError, match="one entry per level"):
        create_vavae("tiny", block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="latents_mean"):
        create_vavae("test", latents_mean=[0.0], latents_std=[1.0])
    assert block_types(5, (4,)) == (("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
                                    ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_vavae("test")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    model(x, sample=False).reconstruction.square().mean().backward()
    reference = model.encoder_conv_out_weight.grad.clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, sample=False).reconstruction.square().mean().backward()
    assert torch.allclose(model.encoder_conv_out_weight.grad, reference, atol=1e-6)


def test_missing_or_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="step2"):
        load_vavae(tmp_path / "nope.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vavae(tmp_path / "folder")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_vavae(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, other)
    with pytest.raises(KeyMismatchError, match="no VA-VAE weights"):
        load_vavae(other)
