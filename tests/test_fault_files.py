"""Wrong and untrusted files: each is refused by the command line with one ERROR line that names the file and the
fix (exit status 2, no traceback), and nothing is ever unpickled without the trust flag.

The command lines run in this process through their ``__main__`` wrapper (microdoppler_finetune.utils.cli.run_main);
the inputs are a tiny simulated dataset, the 'test' VA-VAE (f2, 4 channels) and a tiny DiT trained for 4 steps.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from faults.setups import SIZE, exported_test_vae, one_thread, simulated_dataset

from microdoppler_finetune import sample_dit, step5_validate_export, step6_evaluate, train_conditional_dit
from microdoppler_finetune.config import ConfigError, load_config
from microdoppler_finetune.utils.cli import run_main
from vae_training.cli import main as step4_main

MARKER = "unpickled.txt"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """dataset/ (manifest), export/ and latents/ of the 'test' VA-VAE, dit/ with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("files")
    with one_thread():
        dataset = simulated_dataset(root)
        vae = exported_test_vae(root)
        assert train_conditional_dit.main(dit_args(root / "work")) == 0
    return {"root": root, "work": root / "work", "vae": vae, "dataset": dataset,
            "export": root / "work" / "export" / "vavae_encoder_for_dit"}


def dit_args(work: Path, *extra: str) -> list:
    return ["--work_dir", str(work), "--preset", "cpu_demo", "--model", "tiny", "--steps", "4", "--batch_size", "4",
            "--precision", "fp32", "--set", "dit.train.val_every=0", "--set", "dit.train.sample_every=0",
            "--set", "dit.train.checkpoint_every=2", "--set", "dit.train.keep_checkpoints=5", *extra]


def copy_work(base: dict, tmp_path: Path, with_dit: bool = False, name: str = "work") -> Path:
    work = tmp_path / name
    for part in ("dataset", "export", "latents") + (("dit",) if with_dit else ()):
        shutil.copytree(base["work"] / part, work / part)
    return work


def fails_with_one_line(main, argv, capsys, *expected: str) -> str:
    """``main`` as its command line runs it: exit status 2 and a single ERROR line holding every ``expected``."""
    code = run_main(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    return lines[0]


# ------------------------------------------------------------------------------------------- wrong files


def test_a_checkpoint_of_another_kind_or_size_is_refused_naming_it(base, tmp_path, capsys):
    dit_ckpt = base["work"] / "dit" / "checkpoints" / "0000004.pt"
    # A DiT checkpoint where a VA-VAE is expected ...
    fails_with_one_line(step5_validate_export.main, ["--checkpoint", dit_ckpt, "--export", "--work_dir", tmp_path,
                                                     "--dataset_dir", base["dataset"], "--preset", "cpu_demo"],
                        capsys, str(dit_ckpt), "DiT checkpoint", "Pass the released VA-VAE")
    # ... a VA-VAE where a DiT is expected (to sample from, or to fine-tune from) ...
    fails_with_one_line(sample_dit.main, ["--checkpoint", base["vae"], "--vae_encoder", base["export"], "--out",
                                          tmp_path / "samples"], capsys, str(base["vae"]), "safetensors file")
    work = copy_work(base, tmp_path)
    fails_with_one_line(train_conditional_dit.main, dit_args(work, "--init_from", base["vae"]), capsys,
                        str(base["vae"]), "Cannot infer the DiT architecture", "Pass a released LightningDiT")
    # ... and a DiT of another latent shape to fine-tune from.
    from models.dit import LightningDiT, dit_config_dict

    config = dict(torch.load(str(dit_ckpt), weights_only=True)["dit_config"], in_channels=8)
    other = LightningDiT(**config)
    torch.save({"model": other.state_dict(), "ema": other.state_dict(), "dit_config": dit_config_dict(other)},
               tmp_path / "other.pt")
    fails_with_one_line(train_conditional_dit.main, dit_args(work, "--init_from", tmp_path / "other.pt"), capsys,
                        str(tmp_path / "other.pt"), "8-channel", "same VA-VAE latent shape")


def test_truncated_checkpoints_are_named_and_training_resumes_from_the_last_complete_one(base, tmp_path, capsys):
    truncated = tmp_path / "vavae.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:700])
    fails_with_one_line(step5_validate_export.main, ["--checkpoint", truncated, "--export", "--work_dir", tmp_path,
                                                     "--dataset_dir", base["dataset"], "--preset", "cpu_demo"],
                        capsys, str(truncated), "Check that the download finished")

    # The newest DiT checkpoint damaged (a half copy): a warning names it, training resumes from the one before.
    work = copy_work(base, tmp_path, with_dit=True)
    newest = work / "dit" / "checkpoints" / "0000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert run_main(train_conditional_dit.main, dit_args(work, "--steps", "6")) == 0
    out = capsys.readouterr().out
    assert f"WARNING: {newest} cannot be read" in out and "(step 2)" in out
    assert torch.load(str(newest), weights_only=True)["step"] == 4  # rewritten whole by the resumed run

    # A damaged VA-VAE last.ckpt (the only full training state of a stage): the fix is named.
    stage = tmp_path / "vae" / "stage1" / "checkpoints"
    stage.mkdir(parents=True)
    (stage / "last.ckpt").write_bytes(b"PK\x03\x04 a truncated zip")
    from vae_training.train import vae_config_of_checkpoint

    with pytest.raises(ValueError, match="last.ckpt.damaged") as refused:
        vae_config_of_checkpoint(stage / "last.ckpt")
    assert str(stage / "last.ckpt") in str(refused.value)


def test_lightning_checkpoint_and_plain_state_dict_in_each_others_place(base, tmp_path, capsys):
    from microdoppler_finetune.utils.tensors import state_dict_fingerprint
    from models.vavae import load_vavae

    vae = load_vavae(base["vae"])
    plain = tmp_path / "plain.pt"  # a bare state_dict where a Lightning .ckpt ({"state_dict": ...}) is usual
    torch.save(vae.state_dict(), plain)
    lightning_like = tmp_path / "lightning.ckpt"  # and the other way round
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}, "global_step": 3,
                "vavae_config": dict(vae.config)}, lightning_like)
    assert state_dict_fingerprint(load_vavae(plain)) == state_dict_fingerprint(vae)
    assert state_dict_fingerprint(load_vavae(lightning_like)) == state_dict_fingerprint(vae)
    # The DiT's sampler takes only its own checkpoints: a bare state_dict is refused, naming the file.
    state = torch.load(str(base["work"] / "dit" / "checkpoints" / "0000004.pt"), weights_only=True)
    torch.save(state["model"], tmp_path / "0000004.pt")
    fails_with_one_line(sample_dit.main, ["--checkpoint", tmp_path / "0000004.pt", "--vae_encoder", base["export"],
                                          "--out", tmp_path / "samples"], capsys, str(tmp_path / "0000004.pt"),
                        "not a checkpoint of train_conditional_dit.py")


def test_a_latent_cache_written_by_another_encoder_is_refused(base, tmp_path, capsys):
    from microdoppler_finetune.latents.export import export_encoder_for_dit, read_export_info
    from models.vavae import create_vavae

    work = copy_work(base, tmp_path)
    info = read_export_info(work / "export" / "vavae_encoder_for_dit")
    shutil.rmtree(work / "export" / "vavae_encoder_for_dit")
    torch.manual_seed(1)  # another VA-VAE with the same shapes: only the identity tells them apart
    export_encoder_for_dit(create_vavae("test", sample_size=SIZE), work / "export" / "vavae_encoder_for_dit",
                           latents_mean=info["latents_mean"], latents_std=info["latents_std"])
    fails_with_one_line(train_conditional_dit.main, dit_args(work), capsys, str(work / "latents"),
                        "different VA-VAE", "Rebuild the cache")


@pytest.mark.parametrize("edit, expected", [
    (lambda rows: rows[1].update(person="ID_9"), "do not match"),  # a person step3 never saw
    (lambda rows: rows[1].update(path="../../etc/passwd"), "not inside the data root"),
    (lambda rows: rows[1].update(path="/tmp/elsewhere/ID1_x_Doppler1.jpg"), "not inside the data root"),
    (lambda rows: rows.append(dict(rows[1])), "listed twice"),
])
def test_a_manifest_edited_by_hand_is_refused_naming_the_row(base, tmp_path, capsys, edit, expected):
    import csv

    from microdoppler_finetune.data import ManifestFormatError, load_manifest

    dataset = tmp_path / "dataset"
    shutil.copytree(base["dataset"], dataset)
    with open(dataset / "manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    edit(rows)
    with open(dataset / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ManifestFormatError, match=expected) as refused:
        load_manifest(dataset)
    assert f"{dataset / 'manifest.csv'}, data row" in str(refused.value)
    assert "--overwrite" in str(refused.value)
    fails_with_one_line(step6_evaluate.main, ["--work_dir", tmp_path, "--dataset_dir", dataset, "--epochs", "1"],
                        capsys, str(dataset / "manifest.csv"), expected)


def test_misspelled_config_keys_are_refused_naming_the_closest_valid_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--set dit\.train\.learnig_rate=1e-3: unknown config key "
                                          r"'dit\.train\.learnig_rate'\. Did you mean 'dit\.train\.learning_rate'\?"):
        load_config("cpu_demo", None, ["data.image_size=32", "dit.train.learnig_rate=1e-3"])
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("vae_train:\n  bach_size: 4\n")
    with pytest.raises(ConfigError, match=f"config file {config_file}: .*Did you mean 'vae_train.batch_size'"):
        load_config("cpu_demo", config_file, [])
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config("cpu_demo", None, ["data.image_size=large"])
    from vae_training.stages import resolve_stages

    with pytest.raises(ValueError, match="'epoch' \\(did you mean 'epochs'\\?\\)"):
        resolve_stages(load_config("cpu_demo", None, ["vae_train.stage_overrides.stage1.epoch=2"]))
    fails_with_one_line(train_conditional_dit.main, ["--work_dir", tmp_path, "--set", "dit.tain.steps=3"], capsys,
                        "unknown config key 'dit.tain'", "Did you mean 'dit.train'?")


def test_a_stage_started_without_the_stage_before_it_says_which_to_run(base, tmp_path, capsys):
    empty = tmp_path / "empty"
    fails_with_one_line(step5_validate_export.main, ["--run", empty / "vae", "--all"], capsys, str(empty / "vae"),
                        "step4")
    fails_with_one_line(train_conditional_dit.main, ["--work_dir", empty, "--preset", "cpu_demo"], capsys,
                        "step5_validate_export.py")
    fails_with_one_line(sample_dit.main, ["--checkpoint", empty / "dit", "--vae_encoder", base["export"], "--out",
                                          empty / "samples"], capsys, str(empty / "dit"))
    fails_with_one_line(step6_evaluate.main, ["--work_dir", empty], capsys, "Run step3")
    fails_with_one_line(lambda argv: step4_main(argv), ["--preset", "cpu_demo", "--stages", "2", "--work_dir", empty,
                                                        "--dataset_dir", base["dataset"]], capsys,
                        "Stage 'stage1' has not run", "Run that stage first")
    fails_with_one_line(lambda argv: step4_main(argv), ["--preset", "gpu", "--stages", "1", "--work_dir", empty],
                        capsys, "No data: pass --data_root")


# ------------------------------------------------------------------------------------------- untrusted files


class Payload:
    """Unpickling this creates a file: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious(path: Path, marker: Path, layout: str) -> Path:
    content = {"state_dict": {"weight": torch.zeros(2)}, "hook": Payload(marker)}
    if layout == "dit":
        content = {"step": 9, "model": {}, "ema": {}, "dit_config": {}, "data": {}, "hook": Payload(marker)}
    torch.save(content, path)
    return path


def test_nothing_is_unpickled_without_the_trust_flag(base, tmp_path, capsys):
    marker = tmp_path / MARKER
    vae_file = malicious(tmp_path / "vavae.pt", marker, "vae")
    fails_with_one_line(step5_validate_export.main, ["--checkpoint", vae_file, "--export", "--work_dir", tmp_path,
                                                     "--dataset_dir", base["dataset"], "--preset", "cpu_demo"],
                        capsys, str(vae_file), "--trust_pickle")
    dit_file = malicious(tmp_path / "dit.pt", marker, "dit")
    fails_with_one_line(sample_dit.main, ["--checkpoint", dit_file, "--vae_encoder", base["export"], "--out",
                                          tmp_path / "samples"], capsys, str(dit_file), "--trust_pickle")
    fails_with_one_line(train_conditional_dit.main, dit_args(copy_work(base, tmp_path), "--init_from", dit_file),
                        capsys, str(dit_file), "--trust_pickle")
    # Planted as the newest training checkpoint: passed over (named in a warning), never unpickled.
    work = copy_work(base, tmp_path, with_dit=True, name="resumed")
    planted = malicious(work / "dit" / "checkpoints" / "0000009.pt", marker, "dit")
    assert run_main(train_conditional_dit.main, dit_args(work, "--steps", "5")) == 0
    assert f"WARNING: {planted} cannot be read" in capsys.readouterr().out
    from vae_training.train import vae_config_of_checkpoint

    with pytest.raises(ValueError, match="pickled Python objects"):  # ours never need unpickling: refused
        vae_config_of_checkpoint(malicious(tmp_path / "last.ckpt", marker, "vae"))
    assert not marker.exists()

    # With the flag the user vouches for the file: then, and only then, it is unpickled.
    run_main(step5_validate_export.main, [str(a) for a in ["--checkpoint", vae_file, "--export", "--trust_pickle",
                                                           "--work_dir", tmp_path, "--dataset_dir", base["dataset"],
                                                           "--preset", "cpu_demo"]])
    capsys.readouterr()
    assert marker.exists()


def test_downloaded_files_are_checked_by_size_and_hash(tmp_path):
    import hashlib

    from microdoppler_finetune.weights.verify import Expected, VerificationError, file_record

    data = b"released weights" * 1000
    expected = Expected(size=len(data), sha256=hashlib.sha256(data).hexdigest(), source="registry", label="registry")
    good = tmp_path / "good.safetensors"
    good.write_bytes(data)
    record = file_record(good, "download", None, None, expected, rehash=True, log=lambda _: None)
    assert record["sha256"] == expected.sha256 and record["sha256_source"] == "registry"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])  # an interrupted download
    with pytest.raises(VerificationError, match="size") as refused:
        file_record(cut, "download", None, None, expected, rehash=True, log=lambda _: None)
    assert str(cut) in str(refused.value) and "run step2 again" in str(refused.value)
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(data[:-1] + b"!")  # same size, other bytes
    with pytest.raises(VerificationError, match="sha256") as refused:
        file_record(changed, "download", None, None, expected, rehash=True, log=lambda _: None)
    assert str(changed) in str(refused.value)


def test_paths_inside_saved_files_cannot_leave_their_folder(base, tmp_path):
    from microdoppler_finetune.latents.cache import load_latent_cache

    cache = tmp_path / "latents"
    shutil.copytree(base["work"] / "latents", cache)
    info = json.loads((cache / "latent_cache.json").read_text())
    info["splits"]["train"]["shards"][0]["file"] = "../../elsewhere/train-00000.safetensors"
    (cache / "latent_cache.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not a file of"):
        load_latent_cache(cache, expected_vae_identity=base["export"])
