"""LightningDiT: architecture, conditioning and guidance, loading released/own checkpoints, class-table adaptation."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from models.checkpoints import KeyMismatchError, PickleRefusedError
from models.dit import (
    DIT_PRESETS,
    LightningDiT,
    adapt_class_embedding,
    checkpoint_filter_fn,
    count_parameters,
    create_dit,
    dit_config_dict,
    infer_config_from_state_dict,
    load_dit,
    load_dit_state_dict,
    preset_name,
)

TINY = dict(input_size=8, in_channels=4, num_classes=5, num_conditions=3)


def official_outputs_dir() -> Path:
    """The shared reference folder beside the clone, or $MDF_SHARED_DIR/reference/official_outputs."""
    if os.environ.get("MDF_SHARED_DIR"):
        return Path(os.environ["MDF_SHARED_DIR"]) / "reference" / "official_outputs"
    return Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official_outputs"


def need_official(name: str) -> Path:
    path = official_outputs_dir() / name
    if not path.is_file():
        pytest.skip(f"official reference file {path} is absent (set MDF_SHARED_DIR to the shared folder)")
    return path


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (the fresh adaLN-Zero model outputs 0 and hides every conditioning path)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_model(seed: int = 0, **overrides) -> LightningDiT:
    config = dict(TINY)
    config.update(overrides)
    return randomize(create_dit("tiny", **config), seed).eval()


def test_forward_backward_shapes_and_fresh_model_predicts_zero():
    model = create_dit("tiny", **TINY)
    x = torch.randn(3, 4, 8, 8)
    t = torch.rand(3)
    out = model(x, t, torch.tensor([0, 1, 4]), torch.tensor([0, 2, 1]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero output layer
    model = randomize(model).train()
    out = model(x, t, torch.tensor([0, 1, 4]), torch.tensor([0, 2, 3]))
    out.square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["condition_embedder.embedding_table.weight"].abs().sum() > 0
    # patch 2 and learn_sigma: the output keeps the input shape (sigma half dropped like the reference)
    model2 = randomize(create_dit("tiny", input_size=8, in_channels=4, patch_size=2, learn_sigma=True))
    assert model2.final_layer.linear.out_features == 2 * 2 * 8
    assert model2(x, t, torch.tensor([0, 1, 2])).shape == x.shape


def test_presets_and_names():
    assert preset_name("LightningDiT-XL/1") == "XL/1" and preset_name("s_2") == "S/2"
    assert DIT_PRESETS["S/2"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=2)
    assert DIT_PRESETS["L/2"]["depth"] == 24 and DIT_PRESETS["XL/1"]["hidden_size"] == 1152
    demo = create_dit("tiny/2", input_size=16, in_channels=16, num_classes=8)  # the CPU demo's DiT
    assert demo.x_embedder.num_patches == 64  # 16x16 latents in 2x2 patches: 64 tokens
    with pytest.raises(ValueError, match="Unknown DiT preset"):
        create_dit("XXL/3")
    with pytest.raises(ValueError, match="unknown DiT config keys"):
        create_dit("tiny", weight_init="x")  # a misspelled option is an error, never silently ignored
    # the release, XL/1 on 16x16x32 latents with 1000 classes, counted from the released layer shapes
    h, m, depth = 1152, int(2 / 3 * 4 * 1152), 28
    block = (3 * h * h + 3 * h) + (h * h + h) + (2 * m * h + 2 * m) + (m * h + h) + (6 * h * h + 6 * h) + 2 * h
    rest = (32 * h + h) + (256 * h + h + h * h + h) + 1001 * h + (h + 32 * h + 32 + 2 * h * h + 2 * h)
    assert count_parameters("XL/1") == depth * block + rest  # 674.96 M (+0.29 M frozen pos_embed = "675 M")


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_model(learn_sigma=True, use_qknorm=True)
    model.save_pretrained(tmp_path / "dit")
    loaded = LightningDiT.from_pretrained(tmp_path / "dit").eval()
    via_loader = load_dit(tmp_path / "dit")
    assert dit_config_dict(loaded) == dit_config_dict(model) == dit_config_dict(via_loader)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        ref = model(x, t, [1, 5], [2, 3])
        assert torch.equal(loaded(x, t, [1, 5], [2, 3]), ref)
        assert torch.equal(via_loader(x, t, [1, 5], [2, 3]), ref)
    assert not via_loader.training and via_loader.load_report.ok


def test_official_tiny_checkpoint_reproduces_reference_output():
    io = torch.load(need_official("lightningdit_tiny_io.pt"), weights_only=True)
    model = load_dit(need_official("lightningdit_tiny_official.pt"))
    assert not model.training
    for key, value in io["config"].items():
        assert model.config[key] == value, key  # architecture inferred from the weights alone
    with torch.no_grad():
        out = model(io["x"], io["t"], io["y"])
    tolerance = 1e-4 * max(1.0, io["out"].abs().max().item())
    assert (out - io["out"]).abs().max().item() < tolerance
    # with a (zero) condition table added, any condition id gives the same output
    state = torch.load(need_official("lightningdit_tiny_official.pt"), weights_only=True)["ema"]
    state["condition_embedder.embedding_table.weight"] = torch.zeros(5, 128)
    with_conditions = load_dit_state_dict(state, source="official + zero condition table")
    assert with_conditions.config.num_conditions == 4
    with torch.no_grad():
        out = with_conditions(io["x"], io["t"], io["y"], torch.tensor([0, 3, 4]))
    assert (out - io["out"]).abs().max().item() < tolerance


def test_official_checkpoint_layout_ema_choice_and_training_config(tmp_path):
    model = tiny_model(num_conditions=0, num_classes=10, use_qknorm=False)
    ema_state = {k: v.clone() for k, v in model.state_dict().items()}
    raw_state = {k: v + 1.0 if k == "final_layer.linear.bias" else v.clone() for k, v in ema_state.items()}
    # the reference trainer's YAML dict, as it stores it under 'config'
    official_config = {"model": {"model_type": "LightningDiT-tiny", "use_qknorm": False, "use_swiglu": True,
                                 "use_rope": True, "use_rmsnorm": True, "wo_shift": False, "in_chans": 4},
                       "data": {"image_size": 128, "num_classes": 10}, "vae": {"downsample_ratio": 16}}
    path = tmp_path / "0001000.pt"
    torch.save({"model": {"module." + k: v for k, v in raw_state.items()}, "ema": ema_state,
                "opt": {"state": {}, "param_groups": []}, "config": official_config}, path)
    ema = load_dit(path)
    raw = load_dit(path, use_ema=False)
    assert torch.equal(ema.final_layer.linear.bias, model.final_layer.linear.bias)
    assert torch.equal(raw.final_layer.linear.bias, model.final_layer.linear.bias + 1.0)
    assert ema.config.input_size == 8 and ema.config.num_classes == 10 and ema.config.in_channels == 4
    # a config override that changes the latent grid: the fixed tables are recomputed, and reported
    bigger = load_dit(path, input_size=16)
    assert bigger.pos_embed.shape == (1, 256, 128)
    assert any("pos_embed" in keys for keys in bigger.load_report.ignored.values())


def test_pickled_file_is_refused_without_trust(tmp_path):
    model = tiny_model()
    path = tmp_path / "pickled.pt"
    torch.save({"ema": model.state_dict(), "config": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(PickleRefusedError, match="trust_pickle"):
        load_dit(path)
    assert load_dit(path, trust_pickle=True).config.num_conditions == 3


def test_unexplained_keys_are_errors(tmp_path):
    state = tiny_model().state_dict()
    extra = dict(state, **{"blocks.0.extra.weight": torch.zeros(3)})
    with pytest.raises(KeyMismatchError, match="UNEXPECTED"):
        load_dit_state_dict(extra, config=dit_config_dict(tiny_model()))
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.bias"}
    with pytest.raises(KeyMismatchError, match="MISSING"):
        load_dit_state_dict(missing, config=dit_config_dict(tiny_model()))
    # a 1001-row ImageNet table does not go silently into a 6-row person table
    with pytest.raises(KeyMismatchError, match="adapt_class_embedding"):
        load_dit_state_dict(state, num_classes=1000)
    # a learned (non-standard) position table is refused, not replaced silently
    tampered = dict(state, pos_embed=state["pos_embed"] + 0.5)
    with pytest.raises(KeyMismatchError, match="fixed sin-cos"):
        checkpoint_filter_fn(tampered, tiny_model())


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(use_qknorm=True, learn_sigma=True, patch_size=2),
    dict(use_swiglu=False, use_rmsnorm=False, use_qknorm=True, wo_shift=True, num_conditions=0),
    dict(use_rope=False, use_qknorm=True, mlp_ratio=3.0, num_heads=2, num_classes=31),
    dict(use_rope=False, num_conditions=0),  # no head-size evidence: num_heads of the matching preset
])
def test_architecture_inferred_from_state_dict(overrides):
    model = create_dit("tiny", **dict(TINY, **overrides))
    inferred = infer_config_from_state_dict(model.state_dict())
    expected = dit_config_dict(model)
    for key, value in inferred.items():
        assert expected[key] == value, key
    rebuilt = load_dit_state_dict(model.state_dict())  # loads with zero unexplained keys
    assert rebuilt.load_report.ok


def test_null_ids_are_number_of_classes_for_both_tables():
    model = create_dit("tiny", input_size=8, in_channels=4, num_classes=31, num_conditions=8)
    assert model.person_null_id == 31 and model.y_embedder.embedding_table.num_embeddings == 32
    assert model.condition_null_id == 8 and model.condition_embedder.embedding_table.num_embeddings == 9
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="person ids must lie in"):
        model(x, torch.tensor([0.5]), torch.tensor([32]))
    with pytest.raises(ValueError, match="condition ids must lie in"):
        model(x, torch.tensor([0.5]), torch.tensor([0]), torch.tensor([9]))
    # None means the null row
    randomize(model).eval()
    with torch.no_grad():
        assert torch.equal(model(x, 0.5, None, None), model(x, 0.5, torch.tensor([31]), torch.tensor([8])))
    plain = create_dit("tiny", input_size=8, in_channels=4, num_classes=3)
    with pytest.raises(ValueError, match="no condition embedding"):
        plain(x, 0.5, torch.tensor([0]), torch.tensor([0]))


def test_label_dropout_only_in_train_mode_and_independent():
    model = create_dit("tiny", **dict(TINY, class_dropout_prob=1.0, condition_dropout_prob=0.0))
    person, condition = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0])
    person_table = model.y_embedder.embedding_table.weight
    condition_table = model.condition_embedder.embedding_table.weight
    model.train()  # training: every person label replaced by the null row, conditions untouched
    assert torch.equal(model.y_embedder(person), person_table[[5] * 4])
    assert torch.equal(model.condition_embedder(condition), condition_table[condition])
    model.eval()  # evaluation/sampling: labels used as given
    assert torch.equal(model.y_embedder(person), person_table[person])
    half = create_dit("tiny", **dict(TINY, class_dropout_prob=0.5, condition_dropout_prob=0.5)).train()
    torch.manual_seed(0)
    labels = torch.zeros(4000, dtype=torch.long)
    dropped_p = (half.y_embedder(labels) == half.y_embedder.embedding_table.weight[5]).all(1)
    dropped_c = (half.condition_embedder(labels) == half.condition_embedder.embedding_table.weight[3]).all(1)
    assert 0.45 < dropped_p.float().mean() < 0.55 and 0.45 < dropped_c.float().mean() < 0.55
    both = (dropped_p & dropped_c).float().mean()
    assert 0.2 < both < 0.3  # independent draws: about 0.25 dropped together


def test_cfg_guides_every_channel_within_the_interval():
    model = tiny_model(seed=3)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    person, condition = torch.tensor([1, 2]), torch.tensor([0, 2])
    t = torch.tensor([0.6, 0.6])
    with torch.no_grad():
        v_cond = model(x, t, person, condition)
        v_uncond = model(x, t, None, None)
        assert ((v_cond - v_uncond).abs().amin(dim=(0, 2, 3)) > 0).all()  # they differ in every channel
        guided = model.forward_with_cfg(x, t, person, condition, cfg_scale=4.0)
        moved = (guided - v_cond).abs().amax(dim=(0, 2, 3))
        assert (moved > 1e-3).all(), moved  # every channel is guided (the reference moved only [:3])
        torch.testing.assert_close(guided, v_uncond + 4.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)
        # outside the interval (t < start) the conditional prediction is used
        mixed_t = torch.tensor([0.1, 0.6])
        mixed = model.forward_with_cfg(x, mixed_t, person, condition, cfg_scale=4.0, cfg_interval_start=0.3)
        torch.testing.assert_close(mixed[0], model(x, mixed_t, person, condition)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed[1], guided[1], rtol=1e-5, atol=1e-5)
        # guiding only the condition keeps the person in the unconditional branch
        _, v_u = model.forward_cond_uncond(x, t, person, condition, guide="condition")
        torch.testing.assert_close(v_u, model(x, t, person, None), rtol=1e-5, atol=1e-5)
        _, v_u = model.forward_cond_uncond(x, t, person, condition, guide="person")
        torch.testing.assert_close(v_u, model(x, t, None, condition), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, person = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8]), torch.tensor([0, 4])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=5).train()
        model.y_embedder.dropout_prob = model.condition_embedder.dropout_prob = 0.0
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x, t, person, torch.tensor([1, 2])).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_adapt_class_embedding_for_person_fine_tuning():
    released = tiny_model(num_classes=1000, num_conditions=0, seed=7)  # stands in for the ImageNet XL
    adapted = adapt_class_embedding(released, num_persons=31, num_conditions=8, seed=0)
    assert adapted.config.num_classes == 31 and adapted.config.num_conditions == 8
    table = adapted.y_embedder.embedding_table.weight
    old = released.y_embedder.embedding_table.weight
    assert table.shape == (32, 128) and torch.equal(table[31], old[1000])  # released null row kept
    spread = (table[:31] - old[:1000].mean(0)).std()
    assert 0 < spread < 0.5 * old[:1000].std()  # persons: near the mean class, small noise, all different
    assert torch.count_nonzero(adapted.condition_embedder.embedding_table.weight) == 0
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.4, 0.9])
    with torch.no_grad():  # zero condition table + released null row: unconditional output unchanged
        torch.testing.assert_close(adapted(x, t, None, torch.tensor([0, 5])), released(x, t, None),
                                   rtol=1e-5, atol=1e-5)
    for key, value in released.state_dict().items():
        if not key.startswith("y_embedder."):
            assert torch.equal(adapted.state_dict()[key], value), key


def test_compile_blocks_keeps_weights_names_and_outputs():
    """dit.train.compile_blocks: the compiled model is the same model (keys, values, outputs, gradients)."""
    from models.dit import create_dit

    torch.manual_seed(0)
    model = create_dit("tiny", input_size=8, in_channels=4, num_classes=3)
    reference = create_dit("tiny", input_size=8, in_channels=4, num_classes=3)
    reference.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    model.compile_blocks()
    assert list(model.state_dict()) == keys
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 2])
    out, expected = model(x, t, y), reference(x, t, y)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    expected.square().mean().backward()
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.grad, reference.blocks[0].attn.qkv.weight.grad,
                               rtol=1e-4, atol=1e-6)
