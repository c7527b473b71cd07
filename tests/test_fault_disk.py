"""A full disk and a read-only output folder: the write that fails stops the run with one clear line, and the last
good checkpoint (or manifest, or latent cache) is left as it was.

The failure is injected where the bytes are written (tests run as root here, where a read-only folder made with
chmod would still be written to): half a file is written, then OSError(ENOSPC) / OSError(EROFS) is raised.
"""
from __future__ import annotations

import builtins
import errno
import io
import shutil
from pathlib import Path

import pytest
import torch
from faults import temporaries
from faults.setups import exported_test_vae, one_thread, simulated_dataset

from microdoppler_finetune import step3_prepare_dataset, train_conditional_dit
from microdoppler_finetune.utils.cli import run_main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    with one_thread():
        dataset = simulated_dataset(root)
        vae = exported_test_vae(root)
    return {"root": root, "dataset": dataset, "work": root / "work", "vae": vae}


class FailingWrites:
    """After ``after`` successful write-opens of files whose path contains ``where``, every further one writes
    half its data and raises OSError(code): a disk that fills up (ENOSPC) or turns read-only (EROFS)."""

    def __init__(self, monkeypatch, where: str, code: int, after: int = 0):
        self.where, self.code, self.after, self.opened = str(where), code, after, 0
        self.original_open = builtins.open
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)
        original_save = torch.save

        def save(obj, f, *args, **kwargs):  # torch.save writes from C++: route path targets through open()
            if isinstance(f, (str, Path)):
                buffer = io.BytesIO()
                original_save(obj, buffer, *args, **kwargs)
                with self.open(f, "wb") as handle:
                    handle.write(buffer.getvalue())
                return None
            return original_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)

        import safetensors.torch

        from microdoppler_finetune.latents import cache

        def save_file(tensors, filename, metadata=None):  # safetensors writes from Rust: the same
            with self.open(filename, "wb") as handle:
                handle.write(safetensors.torch.save(tensors, metadata=metadata))

        monkeypatch.setattr(cache, "save_file", save_file)

    def open(self, file, mode="r", *args, **kwargs):
        handle = self.original_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and self.where in str(file):
            self.opened += 1
            if self.opened > self.after:
                return _Failing(handle, self.code, str(file))
        return handle


class _Failing:
    def __init__(self, handle, code, path):
        self.handle, self.code, self.path = handle, code, path

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(self.code, errno.errorcode.get(self.code, "error") and __import__("os").strerror(self.code),
                      self.path)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False


def dit_args(work: Path, dataset: Path, steps: int) -> list:
    return ["--work_dir", str(work), "--dataset_dir", str(dataset), "--preset", "cpu_demo", "--model", "tiny",
            "--steps", str(steps), "--batch_size", "4", "--precision", "fp32", "--set", "dit.train.val_every=0",
            "--set", "dit.train.sample_every=0", "--set", "dit.train.checkpoint_every=2"]


def test_disk_full_during_a_dit_checkpoint_keeps_the_last_one_and_the_rerun_resumes(inputs, tmp_path, monkeypatch,
                                                                                   capsys):
    work = tmp_path / "work"
    for part in ("export", "latents"):
        shutil.copytree(inputs["work"] / part, work / part)
    checkpoints = work / "dit" / "checkpoints"
    with one_thread(), monkeypatch.context() as patch:
        FailingWrites(patch, checkpoints, errno.ENOSPC, after=1)  # the step-2 checkpoint fits, the step-4 one not
        code = run_main(train_conditional_dit.main, dit_args(work, inputs["dataset"], 6))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "ERROR: The disk is full while writing" in err and "rerun the same command" in err
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["0000002.pt"]
    assert torch.load(str(checkpoints / "0000002.pt"), weights_only=True)["step"] == 2  # intact
    assert temporaries(work) == []  # the half-written temporary is removed
    with one_thread():
        assert run_main(train_conditional_dit.main, dit_args(work, inputs["dataset"], 6)) == 0
    assert "(step 2)" in capsys.readouterr().out  # resumed from the checkpoint the full disk spared
    assert torch.load(str(checkpoints / "0000006.pt"), weights_only=True)["step"] == 6


def test_disk_full_during_a_vae_checkpoint_keeps_last_ckpt(inputs, tmp_path, monkeypatch):
    from faults.setups import random_lpips_weights

    from microdoppler_finetune.config import load_config
    from vae_training.train import train_vavae

    cfg = load_config("cpu_demo", None, [
        f"run.work_dir={tmp_path / 'work'}", f"data.dataset_dir={inputs['dataset']}", "data.image_size=32",
        "data.num_workers=0", "vae.preset=test", "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false",
        "vae_loss.lpips_net=alex", "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2", "vae_train.batch_size=4",
        "vae_train.grid_images=2", "vae_train.checkpoint_every_n_steps=1", "vae_train.progress_bar=false",
        "vae_train.stage_overrides.stage1.epochs=1"])
    last = tmp_path / "work" / "vae" / "stage1" / "checkpoints" / "last.ckpt"
    with one_thread(), random_lpips_weights(tmp_path / "torch_home"), monkeypatch.context() as patch:
        FailingWrites(patch, "last.ckpt", errno.ENOSPC, after=2)
        with pytest.raises(OSError) as full:
            train_vavae(cfg, stages="1")
    assert full.value.errno == errno.ENOSPC
    state = torch.load(str(last), weights_only=True)  # still the complete second checkpoint
    assert state["vavae_finetune_counters"]["ae_steps"] == 2
    assert temporaries(tmp_path / "work") == []


def test_a_full_or_read_only_output_folder_stops_step3_with_one_line_and_keeps_the_manifest(inputs, tmp_path,
                                                                                            monkeypatch, capsys):
    out = tmp_path / "dataset"
    args = ["--data_root", str(inputs["root"] / "data"), "--output_dir", str(out), "--workers", "1"]
    for code, expected in ((errno.ENOSPC, "The disk is full"), (errno.EROFS, "cannot be written")):
        with monkeypatch.context() as patch:
            FailingWrites(patch, out, code)
            assert run_main(step3_prepare_dataset.main, args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and expected in err and str(out) in err
        assert not (out / "manifest.csv").exists()  # nothing half-written looks like a finished split
        assert temporaries(tmp_path) == []

    # With a manifest already there, a failing rewrite leaves it as it was.
    assert run_main(step3_prepare_dataset.main, args) == 0
    before = (out / "manifest.csv").read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as patch:
        FailingWrites(patch, "manifest.csv", errno.ENOSPC)
        assert run_main(step3_prepare_dataset.main, args + ["--seed", "3", "--overwrite"]) == 2
    assert (out / "manifest.csv").read_bytes() == before


def test_disk_full_while_writing_the_latent_cache_keeps_the_previous_cache(inputs, tmp_path, monkeypatch, capsys):
    from microdoppler_finetune import step5_validate_export
    from microdoppler_finetune.utils.files import path_sha256

    work = tmp_path / "work"
    shutil.copytree(inputs["work"], work)
    before = path_sha256(work / "latents")
    args = ["--checkpoint", str(inputs["vae"]), "--cache", "--work_dir", str(work), "--preset", "cpu_demo",
            "--image_size", "32", "--set", "data.num_workers=0", "--set", "export.sample_seed=5"]
    with one_thread(), monkeypatch.context() as patch:
        FailingWrites(patch, ".latents.tmp-", errno.ENOSPC, after=1)
        assert run_main(step5_validate_export.main, args) == 2
    assert "The disk is full" in capsys.readouterr().err
    assert path_sha256(work / "latents") == before  # the complete earlier cache, untouched
