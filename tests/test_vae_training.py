"""VA-VAE fine-tuning: the training step, the stage schedule, the stage runner, resuming and the CLI.

Tiny everything: the 'tiny_f8' VA-VAE at 32x32 (4x4 latents), a random-init DINOv2-S as alignment target
(fed 56x56 images), LPIPS-alex with random backbone weights placed where create_lpips looks, a 2-layer
PatchGAN. Weights are random and nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from microdoppler_finetune.config import load_config
from vae_training import stages as S
from vae_training.callbacks import STOP_TIME_BUDGET, GracefulStop
from vae_training.hardware import check_precision, parse_devices

IMAGE_SIZE = 32


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def random_lpips_backbone(tmp_path_factory):
    """Random AlexNet weights where torchvision's cache would hold the real ones (nothing is downloaded)."""
    from models.perceptual import write_random_backbone_weights

    home = tmp_path_factory.mktemp("torch_home")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    write_random_backbone_weights("alex")
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="module")
def target_cache():
    """Alignment targets shared by the tests of this file (building a ViT takes a second)."""
    return {}


def tiny_cfg(work_dir: Path, *extra: str):
    overrides = [
        f"run.work_dir={work_dir}", f"data.image_size={IMAGE_SIZE}", "data.num_workers=0",
        "vae.preset=tiny_f8", "vae.allow_random_init=true",
        "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false",
        "vae_loss.lpips_net=alex", "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2",
        "vae_train.batch_size=4", "vae_train.log_every_n_steps=1", "vae_train.grid_images=4",
        "vae_train.checkpoint_every_n_steps=0",
    ]
    return load_config("cpu_demo", None, overrides + list(extra))


def stage_dict(**changes) -> dict:
    stage = dict(name="stage1", epochs=1, learning_rate=1e-3, vf_weight=0.5, distmat_margin=0.0, cos_margin=0.0,
                 disc_start=10_000, init_from="random")
    stage.update(changes)
    return stage


class ImageItems(Dataset):
    """Dataset items shaped like MicroDopplerDataset's (the feature cache keys on 'path')."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "person_id": 0, "condition_id": 0, "index": index,
                "path": f"img/{index}.jpg"}


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Smooth images (upsampled noise) are learnable by a tiny autoencoder in a few steps.
    small = torch.rand(count, 3, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(small, size=IMAGE_SIZE, mode="bilinear", align_corners=False)


def build_module(tmp_path, target_cache, stage=None, *extra):
    from vae_training.train import build_stage_model

    cfg = tiny_cfg(tmp_path, *extra)
    built = build_stage_model(cfg, stage or stage_dict(), init_checkpoint=None, target_cache=target_cache)
    return built.module


def fit(module, images, *, batch_size=4, epochs=1, callbacks=(), **trainer_kwargs):
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=list(callbacks), accelerator="cpu", devices=1, **trainer_kwargs)
    trainer.fit(module, DataLoader(ImageItems(images), batch_size=batch_size, shuffle=False))
    return trainer


class Record(pl.Callback):
    """What happened at every training batch."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._ae_before = pl_module.ae_steps
        self._disc_before = [p.detach().clone() for p in pl_module.discriminator.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        disc_changed = any(not torch.equal(a, b) for a, b in zip(self._disc_before,
                                                                pl_module.discriminator.parameters()))
        disc_state = [trainer.optimizers[1].state.get(p, {}) for p in pl_module.discriminator.parameters()]
        adam_steps = {int(state["step"]) for state in disc_state if "step" in state} or {0}
        assert len(adam_steps) == 1
        self.rows.append({
            "ae_steps_before": self._ae_before, "ae_steps_after": pl_module.ae_steps,
            "global_step": trainer.global_step, "loss": float(metrics["train_loss"]),
            "lambda_adv": float(metrics["train_lambda_adv"]), "g_loss": float(metrics["train_g_loss"]),
            "disc_loss": float(metrics["train_disc_loss"]), "disc_changed": disc_changed,
            "disc_adam_step": adam_steps.pop(),
            "disc_moments_zero": all(not state or (not state["exp_avg"].any() and not state["exp_avg_sq"].any())
                                     for state in disc_state),
        })


# ----------------------------------------------------------------------------------------------- schedule


def test_schedule_file_holds_the_released_recipe():
    stages = S.resolve_stages(load_config("p100"))
    assert [s["name"] for s in stages] == ["stage1", "stage2", "stage3"]
    assert [(s["vf_weight"], s["distmat_margin"], s["cos_margin"], s["disc_start"], s["init_from"])
            for s in stages] == [(0.5, 0.0, 0.0, 2501, "pretrained"), (0.1, 0.0, 0.0, 1, "stage1"),
                                 (0.1, 0.25, 0.5, 1, "stage2")]
    assert [(s["epochs"], s["learning_rate"]) for s in stages] == [(45, 1e-4), (15, 5e-5), (30, 2e-5)]
    # disc_start counts autoencoder steps; the official values (5001 -> 1 -> 1) count Lightning global steps.
    assert [S.official_disc_start(s) for s in stages] == [5001, 1, 1]


def test_official_disc_start_conversion():
    """The official rule at batch k: GAN term on when 2k >= D, discriminator learning when 2k + 1 >= D."""
    for official in (0, 1, 2, 5, 5001, 50001):
        ours = S.disc_start_from_official(official)
        first_gan = next(k for k in range(10**6) if 2 * k >= official)
        first_disc = next(k for k in range(10**6) if 2 * k + 1 >= official)
        assert ours == first_gan  # our rule: GAN term once `ours` autoencoder steps are done
        ours_disc = max(0, ours - 1)  # our rule: the discriminator learns from one step earlier
        if official % 2 == 1 or official == 0:
            assert ours_disc == first_disc and S.official_disc_start({"disc_start": ours}) == official
        else:  # an even official value: our discriminator starts one step early
            assert ours_disc == first_disc - 1
    assert S.disc_start_from_official(5001) == 2501 and S.disc_start_from_official(50001) == 25001


def test_schedule_overrides_and_errors(tmp_path):
    cfg = load_config("cpu_demo", None, ["vae_train.stage_overrides.stage2.epochs=7",
                                         "vae_train.learning_rate=3e-5"])
    stages = S.resolve_stages(cfg)
    assert stages[1]["epochs"] == 7 and stages[0]["epochs"] == 4  # cpu_demo preset: stage1 4 epochs
    assert {s["learning_rate"] for s in stages} == {3e-5}  # --learning_rate: every stage of the run
    assert [s["name"] for s in S.select_stages(stages, "3,1")] == ["stage1", "stage3"]
    with pytest.raises(ValueError, match="stages 1..3"):
        S.select_stages(stages, "4")
    with pytest.raises(ValueError, match="names stage 'stage9'"):
        S.resolve_stages(load_config("cpu_demo", None, ["vae_train.stage_overrides.stage9.epochs=1"]))
    bad = tmp_path / "schedule.yaml"
    bad.write_text("vae_train:\n  stages:\n    - {name: a, epochs: 1, learning_rate: 1.0e-4}\n")
    with pytest.raises(ValueError, match="lacks vf_weight"):
        S.resolve_stages(load_config("p100", None, [f"vae_train.schedule={bad}"]))


def test_parse_duration():
    assert S.parse_duration("11h30m") == 11 * 3600 + 30 * 60
    assert S.parse_duration("90s") == 90 and S.parse_duration("90") == 90 and S.parse_duration("1.5h") == 5400
    assert S.parse_duration(None) is None
    with pytest.raises(ValueError, match="not understood"):
        S.parse_duration("soon")


def test_graceful_stop_reasons():
    class Counter:
        ae_steps = 5

    assert GracefulStop(Path("x"), deadline=0.0)._reason(Counter()) == STOP_TIME_BUDGET
    assert GracefulStop(Path("x"), stop_after_ae_steps=5)._reason(Counter()) is not None
    assert GracefulStop(Path("x"), deadline=None, stop_after_ae_steps=6)._reason(Counter()) is None


# ----------------------------------------------------------------------------------------------- hardware, CLI


def test_precision_and_devices_checks():
    from microdoppler_finetune.environment import GPUInfo

    t4 = GPUInfo(index=0, name="Tesla T4", total_memory_gb=15.0, compute_capability="7.5", bf16=False, fp16=True)
    a100 = GPUInfo(index=0, name="A100", total_memory_gb=80.0, compute_capability="8.0", bf16=True, fp16=True)
    assert check_precision("32", "gpu", [t4]) == "32-true"
    assert check_precision("16-mixed", "gpu", [t4, t4]) == "16-mixed"
    assert check_precision("bf16", "gpu", [a100]) == "bf16-mixed"
    with pytest.raises(ValueError, match="Tesla T4.*lacks"):
        check_precision("bf16-mixed", "gpu", [t4])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        check_precision("16-mixed", "cpu", [])
    assert parse_devices("0,1") == [0, 1] and parse_devices("2") == 2 and parse_devices("auto") == "auto"


def test_cli_flags_map_onto_the_config(tmp_path):
    from vae_training.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "--kaggle_t4", "--work_dir", str(tmp_path), "--batch_size", "16", "--gradient_accumulation", "1",
        "--learning_rate", "5e-5", "--gradient_clip_val", "0.5", "--precision", "16-mixed",
        "--detect_anomaly", "--time_budget", "11h30m", "--vf_model", "vit_small_patch14_dinov2",
        "--freeze-layers", "3", "--seed", "7", "--trust_pickle", "--set", "vae_train.save_top_k=1"])
    cfg = config_from_args(args)
    assert cfg.run.preset == "t4x2" and cfg.vae_train.devices == "0,1"
    assert (cfg.vae_train.batch_size, cfg.vae_train.gradient_accumulation) == (16, 1)
    assert cfg.vae_train.learning_rate == 5e-5 and cfg.vae_train.gradient_clip_val == 0.5
    assert cfg.vae_train.precision == "16-mixed" and cfg.vae_train.detect_anomaly is True
    assert cfg.vae_train.time_budget == "11h30m" and cfg.vae.vf_model == "vit_small_patch14_dinov2"
    assert cfg.vae.freeze_encoder_levels == 3 and cfg.run.seed == 7 and cfg.vae_train.save_top_k == 1
    assert cfg.run.work_dir == str(tmp_path) and cfg.vae.trust_pickle is True


# ----------------------------------------------------------------------------------------------- training step


def test_steps_change_weights_and_lower_the_loss(tmp_path, target_cache):
    module = build_module(tmp_path, target_cache)
    before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    record = Record()
    fit(module, random_images(4), epochs=8, callbacks=[record])  # the same batch 8 times
    assert module.ae_steps == 8
    changed = [k for k, v in module.vae.state_dict().items() if not torch.equal(v, before[k])]
    assert "decoder.conv_out.weight" in changed and "encoder.conv_in.weight" in changed
    losses = [row["loss"] for row in record.rows]
    assert losses[-1] < 0.8 * losses[0], losses


def test_frozen_encoder_levels_stay_fixed(tmp_path, target_cache):
    module = build_module(tmp_path, target_cache, None, "vae.freeze_encoder_levels=2")
    frozen = {n for n, p in module.vae.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("encoder.down_blocks.0.", "encoder.down_blocks.1.", "encoder.conv_in."))
                          for n in frozen)
    before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    trainer = fit(module, random_images(4), limit_train_batches=1)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    for name, param in module.vae.named_parameters():
        assert (id(param) in optimized) == (name not in frozen)
        assert torch.equal(param, before[name]) == (name in frozen), name


def test_step_scripts_answer_help():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for command in ([sys.executable, str(repo / "microdoppler_finetune" / "step4_train_vavae.py"), "--help"],
                    [sys.executable, "-m", "vae_training.vavae_finetune", "--help"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=repo)
        assert done.returncode == 0 and "--gradient_accumulation" in done.stdout and "--kaggle_t4" in done.stdout


def test_optimizers_use_the_configured_learning_rate_in_every_stage(tmp_path, target_cache):
    class ReadBack(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
            self.betas = [group["betas"] for opt in trainer.optimizers for group in opt.param_groups]

    for extra in ([], ["vae_train.learning_rate=3.0e-5"]):
        cfg = tiny_cfg(tmp_path, *extra)
        for stage in S.resolve_stages(cfg):
            module = build_module(tmp_path, target_cache, dict(stage, init_from="random"), *extra)
            reader = ReadBack()
            fit(module, random_images(4), callbacks=[reader], limit_train_batches=1)
            expected = 3.0e-5 if extra else stage["learning_rate"]
            assert reader.lrs == [expected, expected], (stage["name"], reader.lrs)
            assert reader.betas == [(0.5, 0.9), (0.5, 0.9)]


def test_disc_start_counts_autoencoder_steps_and_warms_the_disc_optimizer(tmp_path, target_cache):
    # 12 batches, accumulation 2 -> 6 autoencoder steps. disc_start=3: the GAN term once 3 steps are done, the
    # discriminator learning from one step earlier, zero-gradient discriminator steps before that.
    module = build_module(tmp_path, target_cache, stage_dict(disc_start=3), "vae_train.gradient_accumulation=2")
    record = Record()
    trainer = fit(module, random_images(12), batch_size=1, callbacks=[record])
    assert module.ae_steps == 6
    for row in record.rows:
        gan_on = row["ae_steps_before"] >= 3
        assert (row["lambda_adv"] > 0) == gan_on and (row["g_loss"] != 0) == gan_on
        assert (row["disc_loss"] > 0) == (row["ae_steps_before"] >= 2)
    # Weights change only at the end of a learning window; before, the optimizer steps with zero gradients:
    # Adam's step count advances (as in the official code), its moments stay zero, the weights do not move.
    assert [r["disc_changed"] for r in record.rows] == [False] * 4 + [False, True] * 4
    assert [r["disc_adam_step"] for r in record.rows] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert all(r["disc_moments_zero"] for r in record.rows[:4]) and not record.rows[5]["disc_moments_zero"]
    assert module.disc_steps == 6
    # Both optimizers step once per autoencoder step: Lightning's global_step is twice the autoencoder step count,
    # as in the official run (whose disc_start is compared with that global_step).
    assert trainer.global_step == 2 * 6


def test_released_stage1_disc_start_starts_the_gan_where_the_official_run_does(tmp_path, target_cache):
    """The released stage 1 (official disc_start 5001, two global steps per batch): the generator's adversarial
    term is first non-zero at batch 2501 (0-based: 2k >= 5001), i.e. the 2502nd autoencoder step; the
    discriminator first learns at batch 2500 (2k + 1 >= 5001)."""
    stage1 = S.resolve_stages(load_config("p100"))[0]
    assert stage1["disc_start"] == 2501
    official_first_gan_batch = next(k for k in range(10**5) if 2 * k >= 5001)
    official_first_disc_batch = next(k for k in range(10**5) if 2 * k + 1 >= 5001)
    module = build_module(tmp_path, target_cache, dict(stage1, init_from="random", learning_rate=1e-3))
    module.ae_steps = 2498  # skip to just before the start (the counter is the module's, not Lightning's)
    record = Record()
    fit(module, random_images(5), batch_size=1, callbacks=[record])
    first_gan = next(r["ae_steps_before"] for r in record.rows if r["lambda_adv"] > 0 and r["g_loss"] != 0)
    first_disc = next(r["ae_steps_before"] for r in record.rows if r["disc_changed"])
    assert first_gan == official_first_gan_batch == 2501  # done steps: the 2502nd autoencoder step
    assert first_disc == official_first_disc_batch == 2500
    assert all(r["lambda_adv"] == 0 and r["g_loss"] == 0 for r in record.rows if r["ae_steps_before"] < 2501)


def test_gradient_clipping_applies_under_manual_optimisation(tmp_path, target_cache):
    clip = 1e-3
    module = build_module(tmp_path, target_cache, stage_dict(disc_start=0),
                          f"vae_train.gradient_clip_val={clip}")
    seen = []

    class WatchSteps(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            # A post-step hook on the optimizers themselves sees the gradients the update used (Lightning runs
            # the backward/clip closure inside optimizer.step, so a pre-step hook would come too early).
            for opt in trainer.optimizers:
                opt.register_step_post_hook(lambda optimizer, args, kwargs: seen.append(_grad_norm(optimizer)))

    fit(module, random_images(8), callbacks=[WatchSteps()])
    assert len(seen) == 2 + 2  # 2 autoencoder and 2 discriminator steps (GAN active from the start)
    assert max(seen) <= clip * (1 + 1e-4)
    assert module.grad_norms["ae_before_clip"] > 10 * clip  # so the clip did something


def test_adaptive_weight_is_independent_of_the_amp_grad_scale():
    # 16-mixed passes the grad scaler's scale into the adaptive weights: the ratio must not change with it.
    from vae_training.losses import adaptive_weight

    weight = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(5, 3)
    out = x @ weight.T
    nll, g = out.abs().sum(), -out.mean()
    plain = adaptive_weight(nll, g, weight, 1e4)
    assert 0 < float(plain) < 1e4
    for scale in (2.0**-8, 1.0, 2.0**10):
        assert float(adaptive_weight(nll, g, weight, 1e4, grad_scale=scale)) == pytest.approx(float(plain), rel=1e-5)


def _grad_norm(optimizer) -> float:
    grads = [p.grad.flatten() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return float(torch.cat(grads).norm())


def test_nonfinite_losses_are_skipped_then_stop_training(tmp_path, target_cache):
    module = build_module(tmp_path, target_cache, None, "vae_train.max_nonfinite_in_a_row=3")
    images = random_images(12)
    images[4:8] = float("nan")  # batch 2 of 3 is broken
    fit(module, images, epochs=1)
    assert module.nonfinite_total == 1 and module.nonfinite_in_a_row == 0 and module.stop_reason is None
    assert module.ae_steps == 2  # the broken batch was skipped, the other two trained
    assert all(torch.isfinite(p).all() for p in module.vae.parameters())

    module = build_module(tmp_path, target_cache, None, "vae_train.max_nonfinite_in_a_row=3")
    before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    broken = torch.full((40, 3, IMAGE_SIZE, IMAGE_SIZE), float("nan"))
    trainer = fit(module, broken, epochs=1)
    assert module.stop_reason == "nonfinite" and module.nonfinite_in_a_row == 3
    assert trainer.global_step == 0 and module.ae_steps == 0  # stopped after 3 of the 10 batches
    assert all(torch.equal(v, before[k]) for k, v in module.vae.state_dict().items())


# ----------------------------------------------------------------------------------------------- stage runner


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny simulated spectrogram set, split once (step3's prepare_dataset) into a manifest folder."""
    from microdoppler_finetune.data import load_manifest, prepare_dataset
    from microdoppler_finetune.simulator import simulate_dataset

    root = tmp_path_factory.mktemp("simulated")
    simulate_dataset(root, people=3, per_person=16, seed=0, image_size=IMAGE_SIZE)
    dataset_dir = tmp_path_factory.mktemp("dataset")
    prepare_dataset(root, dataset_dir, seed=0)
    manifest = load_manifest(dataset_dir)
    assert manifest.entries_for("train") and manifest.entries_for("val")
    return dataset_dir


def runner_cfg(work_dir: Path, dataset_dir: Path, *extra: str):
    return tiny_cfg(work_dir, f"data.dataset_dir={dataset_dir}", "vae_train.stage_overrides.stage1.epochs=2",
                    "vae_train.stage_overrides.stage2.epochs=1", *extra)


def metric_rows(stage_dir: Path) -> list[list[dict]]:
    """CSV rows per logger version (one version per run segment)."""
    import csv

    versions = sorted((stage_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return [list(csv.DictReader(open(v / "metrics.csv"))) for v in versions]


def test_two_stages_resume_and_start_from_the_previous_stage(tiny_dataset, tmp_path):
    from microdoppler_finetune.utils.tensors import state_dict_fingerprint as state_fingerprint
    from models.vavae import load_vavae
    from vae_training.train import train_vavae

    work = tmp_path / "work"
    vae_dir = work / "vae"
    # Interrupted run: stops cleanly at autoencoder step 3 of stage 1 (as a time budget would).
    summary = train_vavae(runner_cfg(work, tiny_dataset, "vae_train.stop_after_ae_steps=3"), stages="1,2")
    first = S.StageFolder(vae_dir, "stage1").read_result()
    assert first.status == S.STATUS_INTERRUPTED and first.ae_steps == 3 and not summary["complete"]
    assert (vae_dir / "stage1" / "checkpoints" / "last.ckpt").is_file()
    assert not (vae_dir / "stage2").exists()

    # The same call again (without the test's stop): resumes stage 1 from step 3, then runs stage 2.
    summary = train_vavae(runner_cfg(work, tiny_dataset), stages="1,2")
    assert summary["complete"]
    stage1 = S.StageFolder(vae_dir, "stage1").read_result()
    stage2 = S.StageFolder(vae_dir, "stage2").read_result()
    assert stage1.status == stage2.status == S.STATUS_FINISHED
    segments = metric_rows(vae_dir / "stage1")
    assert len(segments) == 2
    steps_before = [float(r["train_ae_step"]) for r in segments[0] if r.get("train_ae_step")]
    steps_after = [float(r["train_ae_step"]) for r in segments[1] if r.get("train_ae_step")]
    assert max(steps_before) == 3 and min(steps_after) >= 3  # continued, not restarted at 0
    per_epoch = stage2.ae_steps  # stage 2 runs one full epoch
    assert stage1.ae_steps == 2 * per_epoch  # 2 epochs in all, the 3 steps before the stop included
    assert [row["epoch"] for row in stage1.val_history][-1] == 1

    # Chosen checkpoints carry their real validation PSNR in the file name.
    chosen = S.StageFolder(vae_dir, "stage1").chosen_checkpoint()
    psnr = float(re.search(r"val_psnr=([0-9.]+)\.ckpt$", chosen.name).group(1))
    assert 3.0 < psnr < 99.0 and psnr == pytest.approx(stage1.chosen_metric, abs=0.006)
    for path in (vae_dir / "stage1" / "checkpoints").glob("epoch=*.ckpt"):
        assert re.fullmatch(r"epoch=\d{3}-val_psnr=\d+\.\d{2}\.ckpt", path.name), path.name
        assert "0.0000" not in path.name and "nan" not in path.name

    # Stage 2 started from exactly the weights of stage 1's chosen checkpoint.
    assert Path(stage2.init_checkpoint) == chosen
    assert stage2.init_fingerprint == state_fingerprint(load_vavae(chosen))
    assert stage2.init_fingerprint != stage1.init_fingerprint

    # The learning rate the optimizers used, read back from them every step, is the stage's.
    for name, lr in (("stage1", 1e-3), ("stage2", 2.5e-4)):  # configs/cpu_demo.yaml
        used = {float(r["train_lr_ae"]) for seg in metric_rows(vae_dir / name) for r in seg if r.get("train_lr_ae")}
        assert len(used) == 1 and used.pop() == pytest.approx(lr, rel=1e-6)  # logged as float32

    # Figures, resolved config and the loud note about the random alignment target.
    assert sorted(p.name for p in (vae_dir / "stage1" / "reconstructions").glob("*.png")) == \
        ["epoch_000.png", "epoch_001.png"]
    assert (vae_dir / "stage1" / "loss_curves.png").is_file()
    from omegaconf import OmegaConf

    saved = OmegaConf.load(vae_dir / "stage2" / "config.yaml")
    assert saved.stage.name == "stage2" and saved.stage.learning_rate == 2.5e-4
    assert "NOT pretrained" in stage2.alignment_target
    written = json.loads((vae_dir / "stage2" / "stage_result.json").read_text())
    assert written["alignment_target"] == stage2.alignment_target

    # A third call finds both stages finished and trains nothing.
    summary = train_vavae(runner_cfg(work, tiny_dataset), stages="1,2")
    assert summary["complete"] and len(metric_rows(vae_dir / "stage1")) == 2


def test_nonfinite_stop_writes_a_checkpoint_and_a_clear_status(tiny_dataset, tmp_path):
    from vae_training.train import train_vavae

    work = tmp_path / "work"
    # An absurd learning rate makes the weights, then the loss, non-finite within a couple of steps.
    cfg = runner_cfg(work, tiny_dataset, "vae_train.stage_overrides.stage1.learning_rate=1e30",
                     "vae_train.max_nonfinite_in_a_row=2")
    summary = train_vavae(cfg, stages="1")
    result = S.StageFolder(work / "vae", "stage1").read_result()
    assert result.status == S.STATUS_NONFINITE and not summary["complete"]
    assert "non-finite" in result.message and result.nonfinite_skipped_total >= 2
    assert (work / "vae" / "stage1" / "checkpoints" / "nonfinite_stop.ckpt").is_file()


@pytest.mark.ddp
def test_ddp_two_cpu_processes(tiny_dataset, tmp_path, random_lpips_backbone):
    """2-process DDP on CPU (gloo) with manual optimisation, through the real command line.

    disc_start=2 over 3 autoencoder steps: a zero-gradient discriminator step, a discriminator update, then the
    GAN term as well."""
    import subprocess
    import sys

    work = tmp_path / "work"
    sets = ["data.image_size=32", "data.num_workers=0", "vae.preset=tiny_f8",
            "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false", "vae_loss.lpips_net=alex",
            "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2", "vae_train.accelerator=cpu",
            "vae_train.devices=2", "vae_train.stage_overrides.stage1.epochs=1",
            "vae_train.stage_overrides.stage1.disc_start=2", "vae_train.limit_train_batches=3",
            "vae_train.grid_images=2"]
    command = [sys.executable, "-m", "vae_training.vavae_finetune", "--preset", "cpu_demo", "--stages", "1",
               "--work_dir", str(work), "--dataset_dir", str(tiny_dataset), "--batch_size", "2"]
    for item in sets:
        command += ["--set", item]
    env = dict(os.environ, TORCH_HOME=str(random_lpips_backbone))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = S.StageFolder(work / "vae", "stage1").read_result()
    assert result.status == S.STATUS_FINISHED and "x2" in result.hardware and "DDP" in result.hardware
    assert result.ae_steps == 3 and result.chosen_metric is not None
    assert result.global_step == 2 * 3  # both optimizers stepped at every autoencoder step


def test_the_demo_aligns_to_a_coarser_token_grid_but_never_a_finer_one(tmp_path):
    from vae_training.builders import build_alignment_target

    cfg = load_config("cpu_demo", None, [f"run.work_dir={tmp_path}", "vae.vf_pretrained=false"])
    assert int(cfg.vae.vf_token_grid) == 8
    coarse = build_alignment_target(cfg, 16)  # the demo: 64 px, f4
    assert coarse.model.token_grid == (8, 8) and coarse.model.input_size == (112, 112)
    assert "8x8 tokens upsampled to the 16x16 latent grid" in coarse.description
    assert coarse.model(torch.zeros(1, 3, 64, 64)).shape == (1, coarse.feature_dim, 16, 16)
    small = build_alignment_target(cfg, 4)  # a 4x4 latent grid: the release's rule, no finer token grid
    assert small.model.token_grid == (4, 4) and "upsampled" not in small.description
