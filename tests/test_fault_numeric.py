"""Numerical faults in both trainers: a NaN or Inf in a batch or in the loss is skipped and counted; repeated
faults stop the run with a checkpoint of the state at the stop and a message that names the likely cause.

tests/test_vae_training.py covers the VA-VAE module on its own (NaN images skipped, a run of them stops) and an
absurd learning rate; tests/test_dit_training.py a NaN loss in every DiT step. These go through the real stage
runners (train_vavae, train_dit) with faults injected into the data and the loss.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from faults.setups import SIZE, exported_test_vae, one_thread, random_lpips_weights, simulated_dataset

from microdoppler_finetune.config import load_config
from microdoppler_finetune.data import load_manifest

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("numeric")
    with one_thread(), random_lpips_weights(root / "torch_home"):
        dataset = simulated_dataset(root, per_person=12)
        exported_test_vae(root)
    return {"root": root, "dataset": dataset, "work": root / "work", "torch_home": root / "torch_home"}


# ------------------------------------------------------------------------------------------- VA-VAE


def vae_cfg(work: Path, dataset: Path, *extra: str):
    return load_config("cpu_demo", None, [
        f"run.work_dir={work}", f"data.dataset_dir={dataset}", f"data.image_size={SIZE}", "data.num_workers=0",
        "vae.preset=tiny_f8", "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false",
        "vae_loss.lpips_net=alex", "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2",
        "vae_train.batch_size=4", "vae_train.grid_images=2", "vae_train.checkpoint_every_n_steps=0",
        "vae_train.progress_bar=false", "vae_train.max_nonfinite_in_a_row=2",
        "vae_train.stage_overrides.stage1.epochs=1", *extra])


def poison_images(monkeypatch, broken_rows):
    """Manifest rows whose image comes back as NaN (a broken input that got through)."""
    from microdoppler_finetune.data.dataset import MicroDopplerDataset

    original = MicroDopplerDataset.__getitem__

    def getitem(self, i):
        item = original(self, i)
        if self.split == "train" and broken_rows(item["index"]):
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item

    monkeypatch.setattr(MicroDopplerDataset, "__getitem__", getitem)


def test_vae_stage_skips_a_nan_batch_and_stops_on_repeated_ones_with_a_checkpoint(inputs, tmp_path, monkeypatch):
    from vae_training import stages as S
    from vae_training.train import train_vavae

    monkeypatch.setenv("TORCH_HOME", str(inputs["torch_home"]))
    train_rows = [e["index"] for e in load_manifest(inputs["dataset"]).entries_for("train")]
    with one_thread():
        # One broken image: its batch is skipped and counted, the stage finishes.
        poison_images(monkeypatch, lambda row: row == train_rows[3])
        summary = train_vavae(vae_cfg(tmp_path / "one", inputs["dataset"]), stages="1")
        result = S.StageFolder(tmp_path / "one" / "vae", "stage1").read_result()
        assert summary["complete"] and result.status == S.STATUS_FINISHED
        assert result.nonfinite_skipped_total == 1
        assert result.ae_steps == math.ceil(len(train_rows) / 4) - 1
        # Every image broken: training stops after 2 in a row, with the state at the stop and the likely cause.
        poison_images(monkeypatch, lambda row: True)
        summary = train_vavae(vae_cfg(tmp_path / "all", inputs["dataset"]), stages="1")
    result = S.StageFolder(tmp_path / "all" / "vae", "stage1").read_result()
    assert not summary["complete"] and result.status == S.STATUS_NONFINITE
    assert (tmp_path / "all" / "vae" / "stage1" / "checkpoints" / "nonfinite_stop.ckpt").is_file()
    assert "the data" in result.message and "learning rate" in result.message and "problems.csv" in result.message


# ------------------------------------------------------------------------------------------- DiT


def dit_cfg(work: Path, dataset: Path, *extra: str):
    return load_config("cpu_demo", None, [
        f"run.work_dir={work}", f"data.dataset_dir={dataset}", "dit.model=tiny", "dit.train.steps=6",
        "dit.train.batch_size=4", "dit.train.precision=fp32", "dit.train.val_every=0", "dit.train.sample_every=0",
        "dit.train.checkpoint_every=2", "dit.train.log_every=1", "dit.train.max_nonfinite_in_a_row=2", *extra])


def dit_work(inputs, tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    for part in ("export", "latents"):
        (work / part).parent.mkdir(parents=True, exist_ok=True)
        (work / part).symlink_to(inputs["work"] / part, target_is_directory=True)
    return work


def faulty_batches(monkeypatch, bad_steps, value=float("nan")):
    """The batches of these steps (by call order) come back with a non-finite latent."""
    from microdoppler_finetune.dit.data import LatentSplit

    original, calls = LatentSplit.batch, {"n": 0}

    def batch(self, rows, **kwargs):
        x, person, condition = original(self, rows, **kwargs)
        calls["n"] += 1
        if calls["n"] in bad_steps:
            x = x.clone()
            x[0, 0, 0, 0] = value
        return x, person, condition

    monkeypatch.setattr(LatentSplit, "batch", batch)


def test_dit_skips_a_nan_batch_and_an_inf_loss_and_counts_them(inputs, tmp_path, monkeypatch):
    from microdoppler_finetune.dit import trainer as trainer_module
    from microdoppler_finetune.dit.logging import read_log
    from microdoppler_finetune.dit.trainer import train_dit

    faulty_batches(monkeypatch, {2})
    original_terms, calls = trainer_module.velocity_loss_terms, {"n": 0}

    def inf_on_the_fourth(*args, **kwargs):
        terms = original_terms(*args, **kwargs)
        calls["n"] += 1
        return dict(terms, loss=terms["loss"] * float("inf")) if calls["n"] == 4 else terms

    monkeypatch.setattr(trainer_module, "velocity_loss_terms", inf_on_the_fourth)
    work = dit_work(inputs, tmp_path, "work")
    with one_thread():
        result = train_dit(dit_cfg(work, inputs["dataset"]))
    assert result["status"] == "finished" and result["step"] == 6 and result["skipped_steps"] == 2
    state = torch.load(str(work / "dit" / "checkpoints" / "0000006.pt"), weights_only=True)
    assert state["skipped_steps"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    logged = [row for row in read_log(work / "dit") if row.get("event") == "train"]
    assert logged[-1]["skipped_steps"] == 2


@pytest.mark.parametrize("fault, cause", [
    ("data", "rebuild the latent cache"),  # every batch holds a NaN latent
    ("weights", "learning rate is too high"),  # the weights themselves went non-finite
    ("loss", "lower the learning rate"),  # finite inputs and weights, non-finite loss
])
def test_dit_stops_on_repeated_faults_with_a_checkpoint_and_the_likely_cause(inputs, tmp_path, monkeypatch, fault,
                                                                             cause):
    from microdoppler_finetune.dit import trainer as trainer_module
    from microdoppler_finetune.dit.trainer import NONFINITE_STOP_FILE, train_dit

    if fault == "data":
        faulty_batches(monkeypatch, set(range(3, 100)))
    elif fault == "weights":
        original_step = trainer_module.DiTTrainer.train_step

        def diverging_step(self):
            if self.step == 2:
                with torch.no_grad():
                    next(iter(self.model.parameters())).fill_(float("inf"))
            return original_step(self)

        monkeypatch.setattr(trainer_module.DiTTrainer, "train_step", diverging_step)
    else:
        original_terms = trainer_module.velocity_loss_terms

        def inf_after_two(*args, **kwargs):
            terms = original_terms(*args, **kwargs)
            stepping = inf_after_two.calls = getattr(inf_after_two, "calls", 0) + 1
            return dict(terms, loss=terms["loss"] * float("inf")) if stepping > 2 else terms

        monkeypatch.setattr(trainer_module, "velocity_loss_terms", inf_after_two)
    work = dit_work(inputs, tmp_path, "work")
    with one_thread(), pytest.raises(FloatingPointError) as stopped:
        train_dit(dit_cfg(work, inputs["dataset"]))
    message = str(stopped.value)
    assert "2 non-finite steps in a row" in message and cause in message
    checkpoints = work / "dit" / "checkpoints"
    assert str(checkpoints / NONFINITE_STOP_FILE) in message and (checkpoints / NONFINITE_STOP_FILE).is_file()
    assert str(checkpoints / "0000002.pt") in message  # the last good state, which a rerun resumes from
    assert torch.load(str(checkpoints / NONFINITE_STOP_FILE), weights_only=True)["skipped_steps"] == 2
