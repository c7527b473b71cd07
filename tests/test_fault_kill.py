"""Killed runs: every stage's real command is SIGKILLed at a seeded moment, then rerun.

The moment is a seeded, random write of the stage's main output: the child (tests/faults) stops inside that write
and is killed there, which is the worst moment for what is on disk. After the kill no file under its final name
may be half-written; the rerun of the same command must finish, continue from the last complete state (not from
zero) and give the same files as an uninterrupted run where the computation is deterministic.

Tiny everything (3 people x 12 images at 32 px, tiny models, a few steps); one torch thread in every process so
the in-process references and the children compute the same numbers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from faults import child_env, command, file_digests, half_written, run, seeded_delay, temporaries

pytestmark = pytest.mark.fault

PEOPLE, PER_PERSON, SIZE = 3, 12, 32


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, one_thread) -> Path:
    """The uninterrupted reference simulation (in this process)."""
    from microdoppler_finetune.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("reference") / "simulated"
    simulate_dataset(out, people=PEOPLE, per_person=PER_PERSON, image_size=SIZE, seed=0, workers=1,
                     recordings_per_person=4, progress=False)
    return out


def _without_timing(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in ("elapsed_s", "images_per_s", "workers", "out_dir")}


# ------------------------------------------------------------------------------------------- simulator


def test_simulator_killed_inside_an_image_write_reruns_to_the_same_images(tmp_path, simulated):
    out = tmp_path / "simulated"
    args = ["--out", out, "--people", PEOPLE, "--per-person", PER_PERSON, "--image-size", SIZE,
            "--recordings-per-person", 4, "--workers", 2]
    nth = int(seeded_delay("simulate", 2, PEOPLE * PER_PERSON - 2))
    killed = run(command("microdoppler_finetune.simulate", *args), env=child_env(MDF_FAULT_PAUSE=f".jpg:{nth}"),
                 kill_on="MDF_FAULT paused", timeout=120)
    assert killed.killed, killed.output[-2000:]
    assert half_written(out) == []
    assert not (out / "simulation_info.json").exists()  # the folder is not taken for a finished simulation

    done = run(command("microdoppler_finetune.simulate", *args), env=child_env(), timeout=120)
    assert done.returncode == 0, done.output[-3000:]
    assert temporaries(out) == []
    assert file_digests(out, skip=["simulation_info.json"]) == file_digests(simulated, skip=["simulation_info.json"])
    assert _without_timing(json.loads((out / "simulation_info.json").read_text())) == \
        _without_timing(json.loads((simulated / "simulation_info.json").read_text()))


# ------------------------------------------------------------------------------------------- step3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, simulated) -> Path:
    """The reference split of the simulated images (in this process)."""
    from microdoppler_finetune.data import prepare_dataset

    out = tmp_path_factory.mktemp("reference") / "dataset"
    prepare_dataset(simulated, out, seed=0, log=None)
    return out


def test_step3_killed_inside_a_write_reruns_to_the_same_manifest(tmp_path, simulated, dataset):
    out = tmp_path / "dataset"
    args = ["--data_root", simulated, "--output_dir", out, "--workers", 1]
    # step3 writes its six files last, manifest.csv at the very end: stop inside one of them.
    nth = int(seeded_delay("step3", 1, 6.99))
    killed = run(command("microdoppler_finetune.step3_prepare_dataset", *args),
                 env=child_env(MDF_FAULT_PAUSE=f"{out}:{nth}"), kill_on="MDF_FAULT paused", timeout=120)
    assert killed.killed, killed.output[-2000:]
    assert half_written(out) == []
    assert not (out / "manifest.csv").exists()  # written last: its presence means the whole set is there

    done = run(command("microdoppler_finetune.step3_prepare_dataset", *args), env=child_env(), timeout=120)
    assert done.returncode == 0, done.output[-3000:]
    assert file_digests(out) == file_digests(dataset)


# ------------------------------------------------------------------------------------------- VA-VAE stage


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """Random LPIPS backbone weights where torchvision's cache expects them (nothing is downloaded)."""
    import os

    from models.perceptual import write_random_backbone_weights

    home = tmp_path_factory.mktemp("torch_home")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    write_random_backbone_weights("alex")
    if previous is None:
        os.environ.pop("TORCH_HOME")
    else:
        os.environ["TORCH_HOME"] = previous
    return home


VAE_SETS = ["data.image_size=32", "data.num_workers=0", "vae.preset=tiny_f8", "vae.vf_model=vit_small_patch14_dinov2",
            "vae.vf_pretrained=false", "vae_loss.lpips_net=alex", "vae_loss.disc_channels=8",
            "vae_loss.disc_num_layers=2", "vae_train.batch_size=4", "vae_train.grid_images=2",
            "vae_train.log_every_n_steps=1", "vae_train.checkpoint_every_n_steps=2", "vae_train.progress_bar=false",
            "vae_train.stage_overrides.stage1.epochs=2"]


def vae_command(work: Path, dataset: Path) -> list:
    args = ["--preset", "cpu_demo", "--stages", "1", "--work_dir", work, "--dataset_dir", dataset]
    for item in VAE_SETS:
        args += ["--set", item]
    return command("microdoppler_finetune.step4_train_vavae", *args)


def ckpt_step(path: Path) -> int:
    return int(torch.load(str(path), map_location="cpu", weights_only=True)["vavae_finetune_counters"]["ae_steps"])


def test_vae_stage_killed_at_a_random_moment_and_inside_a_checkpoint_write_resumes(tmp_path, dataset, torch_home):
    from vae_training import stages as S

    work = tmp_path / "work"
    last = work / "vae" / "stage1" / "checkpoints" / "last.ckpt"
    env = dict(TORCH_HOME=str(torch_home), MDF_FAULT_WATCH="last.ckpt")

    # 1. Killed at a random moment after its first checkpoint.
    first = run(vae_command(work, dataset), env=child_env(**env), kill_on=r"MDF_FAULT replaced .*last\.ckpt\t",
                kill_delay=seeded_delay("vae", 0.0, 1.0), timeout=300)
    assert first.killed, first.output[-3000:]
    assert half_written(work) == []
    saved = ckpt_step(last)
    assert saved >= 2

    # 2. Killed inside the write of its second checkpoint, with the temporary folder on another file system (as
    #    /tmp and /kaggle/working are on Kaggle): last.ckpt stays the complete one written before.
    scratch = tmp_path / "other_fs_tmp"
    shm = Path("/dev/shm")
    if shm.is_dir() and os_writable(shm):
        scratch = Path(__import__("tempfile").mkdtemp(dir=shm))
    scratch.mkdir(exist_ok=True)
    second = run(vae_command(work, dataset), env=child_env(MDF_FAULT_PAUSE="last.ckpt:2", TMPDIR=str(scratch), **env),
                 kill_on="MDF_FAULT paused", timeout=300)
    shutil.rmtree(scratch, ignore_errors=True)
    assert second.killed, second.output[-3000:]
    assert f"resuming from {last}" in second.output
    assert half_written(work) == []
    written_before = ckpt_step(last)
    # The one complete write of this run (every 2 steps, or at an epoch's end, whichever comes first); the
    # interrupted one did not replace it.
    assert saved < written_before <= saved + 2

    # 3. The same command again finishes the stage, continuing from that checkpoint.
    done = run(vae_command(work, dataset), env=child_env(**env), timeout=300)
    assert done.returncode == 0, done.output[-3000:]
    assert f"resuming from {last}" in done.output
    result = S.StageFolder(work / "vae", "stage1").read_result()
    assert result.status == S.STATUS_FINISHED
    per_epoch = result.ae_steps // 2
    assert result.ae_steps == 2 * per_epoch and ckpt_step(last) == result.ae_steps
    steps = [int(float(r["train_ae_step"])) for r in _metric_rows(work / "vae" / "stage1") if r.get("train_ae_step")]
    assert min(steps[-(result.ae_steps - written_before):]) > written_before  # the last run did not start at 0
    assert temporaries(work) == []  # the interrupted write's leftover was cleared, never loaded
    assert half_written(work) == []


def os_writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


def _metric_rows(stage_dir: Path) -> list:
    import csv

    rows = []
    for version in sorted((stage_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv", newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


# ------------------------------------------------------------------------------------------- step5


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory) -> Path:
    """A random tiny_f8 VA-VAE in the released LDM layout (as step2 converts it): what step5 validates and exports."""
    from models.vavae import create_vavae, save_ldm_safetensors

    torch.manual_seed(0)
    return save_ldm_safetensors(create_vavae("tiny_f8", sample_size=SIZE),
                                tmp_path_factory.mktemp("vae") / "vavae.safetensors")


def step5_args(work: Path, dataset: Path, vae_file: Path) -> list:
    return ["--checkpoint", str(vae_file), "--dataset_dir", str(dataset), "--work_dir", str(work), "--all",
            "--preset", "cpu_demo", "--image_size", str(SIZE), "--batch_size", "8", "--device", "cpu",
            "--set", "export.lpips_download=false", "--set", "export.shard_size=10", "--set", "data.num_workers=0"]


def _export_info(work: Path) -> dict:
    info = json.loads((work / "export" / "vavae_encoder_for_dit" / "export_info.json").read_text())
    keys = ("vae_identity", "latents_mean", "latents_std", "latent_statistics", "source_sha256", "manifest_sha256")
    return {key: info[key] for key in keys}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dataset, vae_file, torch_home, one_thread) -> Path:
    """The uninterrupted reference step5 (in this process): a work dir with export/ and latents/."""
    from microdoppler_finetune import step5_validate_export as step5

    work = tmp_path_factory.mktemp("reference") / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        assert step5.main(step5_args(work, dataset, vae_file)) == 0
    return work


def test_step5_killed_inside_a_write_reruns_to_the_same_export_and_latent_cache(tmp_path, dataset, vae_file,
                                                                                torch_home, exported):
    work = tmp_path / "work"
    # Every file step5 writes goes under the work dir; stop inside a seeded one of them (figures, metrics, the
    # export's weights, a latent-cache shard, ...), counted over the whole run.
    nth = int(seeded_delay("step5", 1, 14.99))
    killed = run(command("microdoppler_finetune.step5_validate_export", *step5_args(work, dataset, vae_file)),
                 env=child_env(TORCH_HOME=str(torch_home), MDF_FAULT_PAUSE=f"{work}:{nth}"),
                 kill_on="MDF_FAULT paused", timeout=300)
    assert killed.killed, killed.output[-3000:]
    assert half_written(work) == []

    done = run(command("microdoppler_finetune.step5_validate_export", *step5_args(work, dataset, vae_file)),
               env=child_env(TORCH_HOME=str(torch_home)), timeout=300)
    assert done.returncode == 0, done.output[-3000:]
    assert half_written(work) == [] and temporaries(work) == []
    assert file_digests(work, "latents/*") == file_digests(exported, "latents/*")
    assert file_digests(work, "export/**/*.safetensors") == file_digests(exported, "export/**/*.safetensors")
    assert _export_info(work) == _export_info(exported)


# ------------------------------------------------------------------------------------------- DiT training

DIT_ARGS = ["--preset", "cpu_demo", "--model", "tiny", "--steps", "12", "--batch_size", "4", "--lr", "2e-3",
            "--precision", "fp32", "--set", "dit.train.checkpoint_every=4", "--set", "dit.train.val_every=4",
            "--set", "dit.train.sample_every=0", "--set", "dit.train.log_every=2", "--set",
            "dit.train.keep_checkpoints=10", "--set", "dit.train.ema_decay=0.9"]


def dit_work_dir(tmp_path: Path, exported: Path, name: str) -> Path:
    """A work dir with the reference export and latent cache (copies: a run must not touch the shared ones)."""
    work = tmp_path / name
    for part in ("export", "latents"):
        shutil.copytree(exported / part, work / part)
    return work


@pytest.fixture(scope="module")
def trained_dit(tmp_path_factory, exported, dataset, one_thread) -> Path:
    """The uninterrupted reference DiT run (in this process); returns its work dir."""
    from microdoppler_finetune import train_conditional_dit

    work = dit_work_dir(tmp_path_factory.mktemp("reference"), exported, "dit_work")
    assert train_conditional_dit.main(["--work_dir", str(work), "--dataset_dir", str(dataset), *DIT_ARGS]) == 0
    return work


def _weights(path: Path) -> dict:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {"step": state["step"], "model": state["model"], "ema": state["ema"], "opt": state["opt"]["state"]}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_dit_killed_inside_a_checkpoint_write_resumes_and_ends_where_an_uninterrupted_run_does(
        tmp_path, exported, dataset, trained_dit):
    work = dit_work_dir(tmp_path, exported, "work")
    args = ["--work_dir", work, "--dataset_dir", dataset, *DIT_ARGS]
    checkpoints = work / "dit" / "checkpoints"
    # Checkpoints at steps 4, 8 and 12: stop inside the second or the third write.
    nth = int(seeded_delay("dit", 2, 3.99))
    killed = run(command("microdoppler_finetune.train_conditional_dit", *args),
                 env=child_env(MDF_FAULT_PAUSE=f"{checkpoints}:{nth}"), kill_on="MDF_FAULT paused", timeout=300)
    assert killed.killed, killed.output[-3000:]
    assert half_written(work) == []
    complete = sorted(p.name for p in checkpoints.glob("*.pt"))
    assert complete == [f"{4 * i:07d}.pt" for i in range(1, nth)]  # the interrupted one is not among them

    done = run(command("microdoppler_finetune.train_conditional_dit", *args), env=child_env(), timeout=300)
    assert done.returncode == 0, done.output[-3000:]
    assert f"(step {4 * (nth - 1)})" in done.output  # resumed from the last complete checkpoint, not from 0
    assert half_written(work) == [] and temporaries(work) == []
    ours, reference = checkpoints / "0000012.pt", trained_dit / "dit" / "checkpoints" / "0000012.pt"
    assert _same(_weights(ours), _weights(reference))  # exactly the uninterrupted run's weights, EMA, optimizer


# ------------------------------------------------------------------------------------------- sampling


def sample_args(trained: Path, out: Path) -> list:
    return ["--checkpoint", str(trained / "dit"), "--vae_encoder", str(trained / "export" / "vavae_encoder_for_dit"),
            "--out", str(out), "--per_person", "2", "--num_sampling_steps", "3", "--batch_size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, trained_dit, one_thread) -> Path:
    """The uninterrupted reference sampling (in this process)."""
    from microdoppler_finetune import sample_dit

    out = tmp_path_factory.mktemp("reference") / "samples"
    assert sample_dit.main(sample_args(trained_dit, out)) == 0
    return out


def test_sampling_killed_inside_an_image_write_reruns_to_the_same_images(tmp_path, trained_dit, sampled):
    out = tmp_path / "samples"
    nth = int(seeded_delay("sample", 1, 6.99))  # 3 people x 2 images
    killed = run(command("microdoppler_finetune.sample_dit", *sample_args(trained_dit, out)),
                 env=child_env(MDF_FAULT_PAUSE=f".jpg:{nth}"), kill_on="MDF_FAULT paused", timeout=300)
    assert killed.killed, killed.output[-3000:]
    assert half_written(tmp_path) == []
    assert not out.exists()  # an interrupted sampling never looks like a finished one

    done = run(command("microdoppler_finetune.sample_dit", *sample_args(trained_dit, out)), env=child_env(),
               timeout=300)
    assert done.returncode == 0, done.output[-3000:]
    assert half_written(out) == [] and temporaries(tmp_path) == []
    assert file_digests(out, "**/*.jpg") == file_digests(sampled, "**/*.jpg")
    info, expected = (json.loads((d / "generation_info.json").read_text()) for d in (out, sampled))
    assert info["files"] == expected["files"]


# ------------------------------------------------------------------------------------------- step6


def step6_args(work: Path, dataset: Path, sampled: Path) -> list:
    return ["--work_dir", str(work), "--dataset_dir", str(dataset), "--generated", str(sampled), "--preset", "tiny",
            "--image_size", str(SIZE), "--epochs", "2", "--batch_size", "8", "--fractions", "0.5,1.0", "--no_cas",
            "--no_inception", "--device", "cpu", "--seed", "0"]


def _results(work: Path) -> tuple:
    rows = json.loads((work / "evaluation/identification/identification_results.json").read_text())["rows"]
    generation = json.loads((work / "evaluation/generation/generation_metrics.json").read_text())
    for key in ("seconds", "command"):  # the time taken and the work dir differ
        generation.pop(key, None)
    return [{k: v for k, v in row.items() if k not in ("seconds", "command")} for row in rows], generation


def test_evaluation_killed_inside_a_write_reruns_to_the_same_results(tmp_path, dataset, sampled, one_thread):
    from microdoppler_finetune import step6_evaluate

    reference = tmp_path / "reference"
    step6_evaluate.main(step6_args(reference, dataset, sampled))
    work = tmp_path / "work"
    nth = int(seeded_delay("step6", 1, 8.99))  # step6 writes 8 files
    killed = run(command("microdoppler_finetune.step6_evaluate", *step6_args(work, dataset, sampled)),
                 env=child_env(MDF_FAULT_PAUSE=f"{work}:{nth}"), kill_on="MDF_FAULT paused", timeout=300)
    assert killed.killed, killed.output[-3000:]
    assert half_written(work) == []

    done = run(command("microdoppler_finetune.step6_evaluate", *step6_args(work, dataset, sampled)),
               env=child_env(), timeout=300)
    assert done.returncode == 0, done.output[-3000:]
    assert half_written(work) == [] and temporaries(work) == []
    assert _results(work) == _results(reference)
