"""DiT training on a tiny synthetic latent cache: loss goes down, resume is exact, fine-tuning options.

Everything runs on the CPU with the "tiny" DiT preset on 4x8x8 latents (3 persons x 2 walking conditions).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from microdoppler_finetune.config import load_config
from microdoppler_finetune.data.manifest import LABELS_FILE, MANIFEST_COLUMNS
from microdoppler_finetune.dit import checkpointing as C
from microdoppler_finetune.dit.contrastive import PooledFeatureTap, supervised_contrastive_loss
from microdoppler_finetune.dit.finetune import (
    LoraSettings,
    TrainableRule,
    apply_lora,
    apply_trainable_rule,
    trainable_names,
)
from microdoppler_finetune.dit.logging import read_log
from microdoppler_finetune.dit.trainer import train_dit

PERSON_NAMES = ["ID_1", "ID_2", "ID_3"]
CONDITION_NAMES = ["Normal_free", "Backpack_free"]
# Person 3 is never seen with a backpack in training: the "unseen pair" of the sampling tests.
UNSEEN_PAIRS = ((2, 1),)


def make_tiny_setup(root: Path, *, per_pair: int = 8, channels: int = 4, side: int = 8, seed: int = 0,
                    skip_pairs=UNSEEN_PAIRS) -> tuple[Path, Path]:
    """An exported tiny VA-VAE and a latent cache of learnable synthetic latents (per-person patterns)."""
    from microdoppler_finetune.latents.cache import EncodedSplit, write_latent_cache
    from microdoppler_finetune.latents.export import export_encoder_for_dit, vae_identity
    from models.vavae import create_vavae

    root = Path(root)
    torch.manual_seed(seed)
    vae = create_vavae("test")  # 4 latent channels, f2: 16 px images <-> 8x8 latents
    generator = torch.Generator().manual_seed(seed)
    person_pattern = torch.randn(len(PERSON_NAMES), channels, side, side, generator=generator)
    condition_pattern = torch.randn(len(CONDITION_NAMES), channels, side, side, generator=generator)
    splits, row = {}, 0
    for split, count in (("train", per_pair), ("val", max(2, per_pair // 4))):
        persons, conditions, latents = [], [], []
        for p in range(len(PERSON_NAMES)):
            for c in range(len(CONDITION_NAMES)):
                if split == "train" and (p, c) in skip_pairs:
                    continue
                for _ in range(count):
                    persons.append(p)
                    conditions.append(c)
                    noise = torch.randn(channels, side, side, generator=generator)
                    # Offset and scale away from N(0, 1) so the normalisation matters.
                    latents.append(2.0 + 1.5 * (person_pattern[p] + 0.5 * condition_pattern[c] + 0.3 * noise))
        mean = torch.stack(latents)
        std = torch.full_like(mean, 0.05)
        n = len(persons)
        splits[split] = EncodedSplit(split, mean + std * torch.randn(mean.shape, generator=generator), mean, std,
                                     torch.tensor(persons), torch.tensor(conditions), torch.arange(row, row + n),
                                     torch.zeros(n, dtype=torch.uint8))
        row += n
    manifest = root / "dataset" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    # An empty split with its labels, as step3 writes them: the DiT reads the withheld pairs from it.
    manifest.write_text(",".join(MANIFEST_COLUMNS) + "\n")
    (manifest.parent / LABELS_FILE).write_text(json.dumps({"person_names": PERSON_NAMES,
                                                           "condition_names": CONDITION_NAMES}))
    stats_mean = splits["train"].latents.mean(dim=(0, 2, 3)).tolist()
    stats_std = splits["train"].latents.std(dim=(0, 2, 3)).tolist()
    export = export_encoder_for_dit(vae, root / "export" / "vavae_encoder_for_dit", latents_mean=stats_mean,
                                    latents_std=stats_std)
    write_latent_cache(splits, root / "latents", vae_identity_hash=vae_identity(vae), manifest_path=manifest,
                       image_size=2 * side, latents_mean=stats_mean, latents_std=stats_std, sample_seed=0,
                       flip=False, extra_info={"person_names": PERSON_NAMES, "condition_names": CONDITION_NAMES})
    return export, root / "latents"


def tiny_config(work_dir: Path, *overrides: str):
    base = [f"run.work_dir={work_dir}", "dit.model=tiny", "dit.train.steps=30", "dit.train.batch_size=8",
            "dit.train.learning_rate=2e-3", "dit.train.log_every=5", "dit.train.val_every=10",
            "dit.train.sample_every=0", "dit.train.checkpoint_every=10", "dit.train.ema_decay=0.9",
            "dit.train.keep_checkpoints=10", "dit.train.precision=fp32"]
    return load_config("cpu_demo", None, base + list(overrides))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_setup")
    export, cache = make_tiny_setup(root)
    return root, export, cache


def _work_dir(tmp_path: Path, setup) -> Path:
    """A fresh work_dir sharing the module's export and cache (symlinks: the cache is read-only here)."""
    root, _, _ = setup
    work = tmp_path / "work"
    work.mkdir()
    (work / "export").symlink_to(root / "export", target_is_directory=True)
    (work / "latents").symlink_to(root / "latents", target_is_directory=True)
    return work


# ------------------------------------------------------------------------------------------- training


def test_short_training_lowers_deterministic_val_loss_and_logs(tmp_path, tiny_setup):
    work = _work_dir(tmp_path, tiny_setup)
    # adaLN-Zero starts at velocity 0 everywhere; on this data the loss starts to fall after ~30 steps.
    summary = train_dit(tiny_config(work, "dit.train.steps=60", "dit.train.val_every=20",
                                    "dit.train.checkpoint_every=30", "dit.train.log_every=10"))
    assert summary["status"] == "finished" and summary["step"] == 60
    rows = read_log(work / "dit")
    val = [r for r in rows if r["event"] == "val"]
    train = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in val] == [0, 20, 40, 60]
    assert val[-1]["val_loss"] < 0.93 * val[0]["val_loss"]
    assert val[-1]["val_loss_ema"] < 0.93 * val[0]["val_loss_ema"]
    # The learning rate the optimizer used is the configured one; grad norms are logged and finite.
    assert all(r["lr"] == pytest.approx(2e-3) for r in train)
    assert all(r["grad_norm"] > 0 for r in train)
    # Each loss term is logged on its own; the optimised flow loss is MSE + 1 x cosine term (release default).
    assert all(r["flow_loss"] == pytest.approx(r["velocity_mse"] + r["cosine_loss"], rel=1e-4) for r in train)
    assert all(0 < r["cosine_loss"] <= 2 for r in train)
    assert (work / "dit" / "train_log.csv").read_text().startswith("step,event,")
    ckpt = C.load_checkpoint(C.latest_checkpoint(work / "dit" / "checkpoints"))
    assert ckpt["step"] == 60
    assert ckpt["data"]["person_names"] == PERSON_NAMES
    assert [2, 1] not in ckpt["data"]["seen_pairs"] and [2, 0] in ckpt["data"]["seen_pairs"]
    assert ckpt["dit_config"]["num_classes"] == 3 and ckpt["dit_config"]["num_conditions"] == 2
    assert isinstance(ckpt["config"], dict)  # plain types, loadable weights-only


def test_validation_loss_is_deterministic(tmp_path, tiny_setup):
    from microdoppler_finetune.dit.data import load_dit_data
    from microdoppler_finetune.dit.distributed import DistInfo
    from microdoppler_finetune.dit.trainer import DiTTrainer

    work = _work_dir(tmp_path, tiny_setup)
    cfg = tiny_config(work)
    trainer = DiTTrainer(cfg, DistInfo(), load_dit_data(cfg), None, None)
    trainer.train_step()  # change the weights away from the zero-output init
    trainer.model.train()
    first = trainer.validation_loss(trainer.model)
    torch.manual_seed(123)  # global RNG state must not matter
    assert trainer.validation_loss(trainer.model) == first


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path, tiny_setup):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _work_dir(tmp_path / "a", tiny_setup)
    resumed = _work_dir(tmp_path / "b", tiny_setup)
    short = ("dit.train.val_every=4", "dit.train.checkpoint_every=4", "dit.train.log_every=2")
    train_dit(tiny_config(straight, "dit.train.steps=8", *short))
    first = train_dit(tiny_config(resumed, "dit.train.steps=4", *short))
    assert first["step"] == 4
    saved = C.load_checkpoint(C.checkpoint_path(resumed / "dit" / "checkpoints", 4))
    # The rerun of the same command (more steps) resumes; architecture flags on the command line are ignored.
    second = train_dit(tiny_config(resumed, "dit.train.steps=8", "dit.model=mini", *short))
    assert second["step"] == 8
    a = C.load_checkpoint(C.checkpoint_path(straight / "dit" / "checkpoints", 8))
    b = C.load_checkpoint(C.checkpoint_path(resumed / "dit" / "checkpoints", 8))
    assert b["dit_config"] == saved["dit_config"]
    # Every random draw of a step is seeded by (seed, step): resuming repeats the uninterrupted run exactly.
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)
    # Optimizer state was restored, not restarted: Adam's step count continues from 4.
    assert {int(s["step"]) for s in saved["opt"]["state"].values()} == {4}
    assert {int(s["step"]) for s in b["opt"]["state"].values()} == {8}
    assert b["ema_state"]["optimization_step"] == 8  # diffusers' EMAModel counters are restored too


def test_time_budget_saves_and_stops_cleanly(tmp_path, tiny_setup):
    work = _work_dir(tmp_path, tiny_setup)
    summary = train_dit(tiny_config(work, "dit.train.time_budget=1s", "dit.train.val_every=0"))
    assert summary["status"] == "time_budget"
    assert C.latest_checkpoint(work / "dit" / "checkpoints") is not None
    again = train_dit(tiny_config(work, "dit.train.steps=5", "dit.train.val_every=0"))
    assert again["status"] == "finished" and again["step"] == 5


def test_latest_checkpoint_is_chosen_by_step_number_not_size_or_time(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    big_new = folder / "0000009.pt"
    big_new.write_bytes(b"x" * 10_000)
    small = folder / "0000100.pt"
    small.write_bytes(b"x")
    middle = folder / "0000010.pt"
    middle.write_bytes(b"x" * 100)
    (folder / "best.pt").write_bytes(b"x" * 20_000)
    (folder / ".0000200.pt.tmp-1").write_bytes(b"x")
    old = time.time() - 3600
    os.utime(small, (old, old))
    assert C.latest_checkpoint(folder) == small
    assert [s for s, _ in C.list_checkpoints(folder)] == [9, 10, 100]
    C.prune_checkpoints(folder, keep=2)
    assert [s for s, _ in C.list_checkpoints(folder)] == [10, 100]
    assert C.latest_checkpoint(tmp_path / "missing") is None


# ------------------------------------------------------------------------------------------- fine-tuning


def _tiny_dit(**overrides):
    from models.dit import create_dit

    config = dict(input_size=8, in_channels=4, num_classes=3, num_conditions=2)
    config.update(overrides)
    return create_dit("tiny", **config)


def test_freeze_backbone_trains_only_the_label_tables():
    model = _tiny_dit()
    finetune = load_config("cpu_demo", None, ["dit.finetune.freeze_backbone=true"]).dit.finetune
    apply_trainable_rule(model, TrainableRule.from_config(finetune), 0, num_blocks=2)
    names = trainable_names(model)
    assert names and all(n.startswith(("y_embedder.", "condition_embedder.")) for n in names)


def test_lora_adapts_only_block_linears_and_unfreeze_schedule_adds_last_blocks():
    model = apply_lora(_tiny_dit(), LoraSettings(rank=2, alpha=2.0, targets=("qkv", "proj", "w12", "w3"),
                                                 dropout=0.15))
    finetune = load_config("cpu_demo", None, [
        "dit.finetune.lora_rank=2", "dit.finetune.unfreeze_schedule=[{step: 0, last_blocks: 0}, "
        "{step: 5, last_blocks: 1}]"]).dit.finetune
    rule = TrainableRule.from_config(finetune)
    apply_trainable_rule(model, rule, 0, num_blocks=2)
    names = trainable_names(model)
    lora = [n for n in names if "lora_" in n]
    others = [n for n in names if "lora_" not in n]
    assert all(".blocks." in n for n in lora)
    adapted = {n.split(".lora_")[0].split(".")[-1] for n in lora}
    assert adapted == {"qkv", "proj", "w12", "w3"}
    assert not any("x_embedder" in n for n in names)  # the patch embedding's "proj" conv is not a target
    assert all(("y_embedder" in n) or ("condition_embedder" in n) for n in others)
    apply_trainable_rule(model, rule, 5, num_blocks=2)
    later = set(trainable_names(model)) - set(names)
    assert later and all(".blocks.1." in n for n in later)


def test_contrastive_loss_is_lower_for_clustered_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    centres = torch.randn(4, 16, generator=generator) * 3
    clustered = centres[labels] + 0.3 * torch.randn(32, 16, generator=generator)
    shuffled_labels = labels[torch.randperm(32, generator=generator)]
    tight = supervised_contrastive_loss(clustered, labels)
    mixed = supervised_contrastive_loss(clustered, shuffled_labels)
    assert tight < mixed
    # No positive pair in the batch: zero, still differentiable.
    single = supervised_contrastive_loss(clustered[:4].requires_grad_(), torch.arange(4))
    assert float(single.detach()) == 0.0 and single.requires_grad


def test_feature_tap_pools_the_last_block():
    model = _tiny_dit().eval()
    tap = PooledFeatureTap(model)
    model(torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]))
    assert tap.take().shape == (3, 128)
    tap.remove()


def test_finetune_released_format_checkpoint_with_lora_freeze_contrastive(tmp_path, tiny_setup):
    """A tiny checkpoint in the released layout ({'model', 'ema'}, ImageNet-like 10-class table, no condition
    table) is adapted to 3 persons + 2 conditions; only tables, adapters and scheduled blocks change."""
    from microdoppler_finetune.dit.model_setup import load_trained_dit

    released = _tiny_dit(num_classes=10, num_conditions=0)
    with torch.no_grad():  # non-zero adaLN/output layers, as in a trained release
        for p in released.parameters():
            p.add_(0.02 * torch.randn_like(p))
    released_file = tmp_path / "lightningdit-tiny-released.pt"
    torch.save({"model": released.state_dict(), "ema": released.state_dict()}, released_file)
    work = _work_dir(tmp_path, tiny_setup)
    cfg = tiny_config(work, "dit.train.steps=6", "dit.train.val_every=3", "dit.train.checkpoint_every=3",
                      f"dit.finetune.init_from={released_file}", "dit.finetune.freeze_backbone=true",
                      "dit.finetune.lora_rank=2", "dit.finetune.dropout=0.15", "dit.finetune.contrastive_weight=0.3",
                      "dit.finetune.unfreeze_schedule=[{step: 3, last_blocks: 1}]")
    summary = train_dit(cfg)
    assert summary["step"] == 6
    rows = [r for r in read_log(work / "dit") if r["event"] == "train"]
    assert all(r["contrastive_loss"] is not None for r in rows)
    ckpt = C.load_checkpoint(C.latest_checkpoint(work / "dit" / "checkpoints"))
    assert ckpt["lora"]["rank"] == 2 and ckpt["dit_config"]["num_classes"] == 3
    state = ckpt["model"]
    base = released.state_dict()
    prefix = "base_model.model."
    # Block 0 is never unfrozen: its base weights are the released ones.
    torch.testing.assert_close(state[prefix + "blocks.0.attn.qkv.base_layer.weight"], base["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(state[prefix + "t_embedder.mlp.0.weight"], base["t_embedder.mlp.0.weight"])
    # Block 1 trains from step 3 on.
    assert not torch.equal(state[prefix + "blocks.1.mlp.w3.base_layer.weight"], base["blocks.1.mlp.w3.weight"])
    # The sampling loader rebuilds the adapters and merges them into a plain DiT.
    model, info = load_trained_dit(C.latest_checkpoint(work / "dit" / "checkpoints"))
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert model.config.num_classes == 3 and info["step"] == 6


def test_dropout_without_lora_is_refused_not_ignored(tmp_path, tiny_setup):
    from microdoppler_finetune.dit.data import load_dit_data
    from microdoppler_finetune.dit.distributed import DistInfo
    from microdoppler_finetune.dit.trainer import DiTTrainer

    work = _work_dir(tmp_path, tiny_setup)
    cfg = tiny_config(work, "dit.finetune.dropout=0.15", "dit.finetune.freeze_backbone=true")
    with pytest.raises(ValueError, match="lora_rank"):
        DiTTrainer(cfg, DistInfo(), load_dit_data(cfg), None, None)


def test_non_finite_losses_are_skipped_then_training_stops_with_a_message(tmp_path, tiny_setup, monkeypatch):
    from microdoppler_finetune.dit import trainer as trainer_module

    work = _work_dir(tmp_path, tiny_setup)
    def nan_terms(fn, x1, x0, t, transport):
        nan = fn(x1, t).mean(dim=(1, 2, 3)) * float("nan")
        return {"loss": nan, "mse": nan, "cosine": nan}

    monkeypatch.setattr(trainer_module, "velocity_loss_terms", nan_terms)
    with pytest.raises(FloatingPointError, match="non-finite steps in a row"):
        train_dit(tiny_config(work, "dit.train.val_every=0", "dit.train.max_nonfinite_in_a_row=2"))
    assert C.latest_checkpoint(work / "dit" / "checkpoints") is None  # nothing broken was saved
