"""Distributed runs on two CPU processes (gloo), for both trainers: one rank is SIGKILLed after the first
checkpoint, the run ends (no hang, no half-written file), the same command resumes it, and the loss trajectory
matches one process with the same global batch. Only rank 0 writes files (every write is traced per rank).

DiT (torchrun): the trainer draws each sample's noise, time and posterior sample from its place in the global batch,
so with label dropout off two processes with batch 2 compute what one process with batch 4 computes; tolerance
1e-4 (relative) for the float differences of the gradient all-reduce.
VA-VAE (Lightning DDP): the data module deals one seeded permutation out round-robin, the posterior noise is drawn
for the global batch, and the adaptive loss weights use the gradients averaged over the ranks, so the gradient
norm of every step matches one process with batch 4 within 1e-4 (relative); validation within 1 % (the padded
DistributedSampler repeats an image). A resumed mid-epoch run continues the epoch where the checkpoint was taken.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from faults import child_env, half_written, run
from faults.setups import SIZE, exported_test_vae, one_thread, random_lpips_weights, simulated_dataset

pytestmark = [pytest.mark.fault, pytest.mark.ddp]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    with one_thread(), random_lpips_weights(root / "torch_home"):
        dataset = simulated_dataset(root, per_person=12)
        exported_test_vae(root)
    return {"root": root, "dataset": dataset, "work": root / "work", "torch_home": root / "torch_home"}


# ------------------------------------------------------------------------------------------- DiT

DIT_SETS = ["dit.model=tiny", "dit.train.steps=6", "dit.train.precision=fp32", "dit.train.device=cpu",
            "dit.train.val_every=0", "dit.train.sample_every=0", "dit.train.checkpoint_every=2",
            "dit.train.log_every=1", "dit.train.keep_checkpoints=5", "dit.train.learning_rate=2e-3",
            "dit.model_overrides={class_dropout_prob: 0.0, condition_dropout_prob: 0.0}"]


def dit_work(inputs, path: Path) -> Path:
    for part in ("export", "latents"):
        path.mkdir(parents=True, exist_ok=True)
        (path / part).symlink_to(inputs["work"] / part, target_is_directory=True)
    return path


def torchrun_dit(work: Path, dataset: Path) -> list:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "microdoppler_finetune.train_conditional_dit", "--work_dir", str(work), "--dataset_dir",
               str(dataset), "--preset", "cpu_demo", "--batch_size", "2"]
    for item in DIT_SETS:
        command += ["--set", item]
    return command


def train_losses(run_dir: Path) -> dict:
    from microdoppler_finetune.dit.logging import read_log

    return {row["step"]: row["train_loss"] for row in read_log(run_dir) if row.get("event") == "train"}


def test_dit_ddp_matches_one_process_only_rank0_writes_and_a_killed_rank_resumes(inputs, tmp_path):
    from microdoppler_finetune.config import load_config
    from microdoppler_finetune.dit.trainer import train_dit

    single = dit_work(inputs, tmp_path / "single")
    with one_thread():
        train_dit(load_config("cpu_demo", None, [f"run.work_dir={single}", f"data.dataset_dir={inputs['dataset']}",
                                                 "dit.train.batch_size=4", *DIT_SETS]))

    work = dit_work(inputs, tmp_path / "ddp")
    checkpoints = work / "dit" / "checkpoints"
    env = child_env(all_processes=True, MDF_FAULT_WATCH=str(work))
    killed = run(torchrun_dit(work, inputs["dataset"]), env=env, kill_rank="1", timeout=300,
                 kill_on=r"MDF_FAULT replaced .*0000002\.pt\t")
    assert killed.killed, killed.output[-3000:]
    assert killed.returncode != 0  # the run ended (torchrun saw the lost rank), it did not hang
    assert half_written(work) == []
    assert (checkpoints / "0000002.pt").is_file()

    resumed = run(torchrun_dit(work, inputs["dataset"]), env=env, timeout=300)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "Resuming from" in resumed.output and "(step " in resumed.output
    assert killed.ranks_writing(str(work)) | resumed.ranks_writing(str(work)) == {"0"}  # rank 1 wrote nothing

    ours, reference = train_losses(work / "dit"), train_losses(single / "dit")
    assert sorted(ours) == sorted(reference) == list(range(1, 7))
    for step in reference:
        assert ours[step] == pytest.approx(reference[step], rel=1e-4), step
    a = torch.load(str(checkpoints / "0000006.pt"), weights_only=True)["model"]
    b = torch.load(str(single / "dit" / "checkpoints" / "0000006.pt"), weights_only=True)["model"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- VA-VAE

VAE_SETS = [f"data.image_size={SIZE}", "data.num_workers=0", "vae.preset=tiny_f8",
            "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false", "vae_loss.lpips_net=alex",
            "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2", "vae_train.accelerator=cpu",
            "vae_train.grid_images=2", "vae_train.checkpoint_every_n_steps=2", "vae_train.progress_bar=false",
            "vae_train.limit_train_batches=4", "vae_train.stage_overrides.stage1.epochs=2",
            "vae_train.log_every_n_steps=1"]


def vae_command(work: Path, dataset: Path, devices: int, batch: int) -> list:
    command = [sys.executable, "-m", "microdoppler_finetune.step4_train_vavae", "--preset", "cpu_demo", "--stages",
               "1", "--work_dir", str(work), "--dataset_dir", str(dataset), "--batch_size", str(batch),
               "--devices", str(devices)]
    for item in VAE_SETS:
        command += ["--set", item]
    return command


def val_history(work: Path) -> list:
    from vae_training import stages as S

    return S.StageFolder(work / "vae", "stage1").read_result().val_history


def gradient_norms(work: Path) -> dict:
    """Autoencoder step -> gradient norm before clipping, from the stage's CSV logs. The norm is of the gradient
    after DDP's all-reduce, i.e. of the whole global batch (the logged losses are rank 0's half of it)."""
    norms = {}
    for path in sorted((work / "vae" / "stage1").rglob("metrics.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("train_grad_norm_ae"):
                    norms[int(float(row["step"]))] = float(row["train_grad_norm_ae"])
    return norms


def test_vae_ddp_follows_one_process_only_rank0_writes_and_a_killed_rank_resumes(inputs, tmp_path):
    from vae_training import stages as S

    base = dict(TORCH_HOME=str(inputs["torch_home"]))
    single = tmp_path / "single"
    done = run(vae_command(single, inputs["dataset"], 1, 4), env=child_env(all_processes=True, **base), timeout=300)
    assert done.returncode == 0, done.output[-3000:]

    work = tmp_path / "ddp"
    env = child_env(all_processes=True, MDF_FAULT_WATCH=str(work), **base)
    killed = run(vae_command(work, inputs["dataset"], 2, 2), env=env, kill_rank="1", timeout=300,
                 kill_on=r"MDF_FAULT replaced .*last\.ckpt\t")
    assert killed.killed, killed.output[-3000:]
    assert killed.returncode != 0  # the run ended, it did not hang on the lost rank
    assert half_written(work) == []
    last = work / "vae" / "stage1" / "checkpoints" / "last.ckpt"
    saved = int(torch.load(str(last), weights_only=True)["vavae_finetune_counters"]["ae_steps"])
    assert saved >= 2

    resumed = run(vae_command(work, inputs["dataset"], 2, 2), env=env, timeout=400)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resuming from {last}" in resumed.output
    assert killed.ranks_writing(str(work)) | resumed.ranks_writing(str(work)) == {"0"}, \
        killed.markers("open", rank="1") + resumed.markers("open", rank="1")
    result = S.StageFolder(work / "vae", "stage1").read_result()
    assert result.status == S.STATUS_FINISHED and "x2" in result.hardware and result.ae_steps == 8

    ours, reference = val_history(work), val_history(single)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in reference] == [0, 1]
    # Same images, same posterior noise and adaptive weights of the global batch: the gradients agree to float
    # summation order at every step, the killed-and-resumed steps included (measured: equal to 6 digits).
    ours_norms, reference_norms = gradient_norms(work), gradient_norms(single)
    common = sorted(set(ours_norms) & set(reference_norms))
    assert len(common) >= 6 and common[-1] == 8, (ours_norms, reference_norms)
    for step in common:
        assert ours_norms[step] == pytest.approx(reference_norms[step], rel=1e-4), step
    # Validation: DistributedSampler repeats the last images to even the ranks' shares, so the DDP means count a
    # few images twice (measured: 0.3 % apart on this 8-step run).
    for a, b in zip(ours, reference):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.01), a["epoch"]
        assert a["val_psnr"] == pytest.approx(b["val_psnr"], abs=0.1), a["epoch"]
