"""VA-VAE training logs: CSV and TensorBoard side by side, the tqdm stage bar, Lightning imported as `lightning`.

Reuses the tiny setup of test_vae_training (random tiny_f8 VA-VAE at 32 px, random DINOv2-S target, random LPIPS).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from test_vae_training import random_lpips_backbone, runner_cfg, tiny_dataset  # noqa: F401 (fixtures)

from vae_training import stages as S

REPO = Path(__file__).resolve().parents[1]


def test_tiny_stage_writes_tensorboard_and_csv_logs_in_autoencoder_steps(tiny_dataset, tmp_path, capsys):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vae_training.train import train_vavae

    work = tmp_path / "work"
    # 3 autoencoder steps; the GAN term from step 1 on (the discriminator learns from step 0), so λ_adv > 0.
    cfg = runner_cfg(work, tiny_dataset, "vae_train.stage_overrides.stage1.epochs=1",
                     "vae_train.stage_overrides.stage1.disc_start=1", "vae_train.limit_train_batches=3",
                     "vae_train.limit_val_batches=2")
    summary = train_vavae(cfg, stages="1")
    assert summary["complete"]
    logs = work / "vae" / "stage1" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0"]
    version = logs / "version_0"
    events = list(version.glob("events.out.tfevents.*"))
    assert len(events) == 1 and (version / "metrics.csv").is_file()  # both loggers, one folder per run segment

    accumulator = EventAccumulator(str(version), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    # Every loss term and adaptive weight on its own, under the CSV's names.
    for name in ("val_psnr", "val_loss", "train_loss", "train_nll", "train_kl", "train_vf", "train_lambda_vf",
                 "train_lambda_adv", "train_g_loss", "train_disc_loss", "train_lr_ae"):
        assert name in tags, (name, sorted(tags))
    psnr = accumulator.Scalars("val_psnr")
    assert len(psnr) == 1 and psnr[0].step == 3 and 0 < psnr[0].value < 99  # x value: the autoencoder step
    lambda_adv = {event.step: event.value for event in accumulator.Scalars("train_lambda_adv")}
    assert sorted(lambda_adv) == [1, 2, 3]  # logged after each step (log_every_n_steps=1)
    assert lambda_adv[1] == 0 and lambda_adv[2] > 0 and lambda_adv[3] > 0
    assert accumulator.Tags()["images"] == ["val_reconstructions"]  # inputs above, reconstructions below

    with open(version / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("train_loss")] == [1, 2, 3]
    assert [float(r["train_ae_step"]) for r in rows if r.get("train_loss")] == [1.0, 2.0, 3.0]

    # Progress: the tqdm bar (stderr; not a terminal here, so plain ASCII) and one validation line per epoch.
    out = capsys.readouterr()
    assert "stage1 epoch 1/1" in out.err and "3/3" in out.err and "\x1b[" not in out.err
    assert re.search(r"\[stage1\] epoch 1/1 at autoencoder step 3: validation psnr=\d", out.out)
    assert "GAN term after 1 autoencoder steps (disc_start; official global step 1)" in out.out

    # A resumed segment gets the next version folder for both loggers.
    assert S.next_log_version(logs) == "version_1"


def test_lightning_is_imported_as_lightning_only():
    """`import lightning` (the unified package), never the separate `pytorch_lightning` distribution."""
    files = [*sorted((REPO / "vae_training").glob("*.py")), REPO / "tests" / "test_vae_training.py",
             REPO / "tests" / "test_losses.py", Path(__file__)]
    for path in files:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+pytorch_lightning\b", text, re.MULTILINE), path
