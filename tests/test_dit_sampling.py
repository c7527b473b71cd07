"""Sampling with a trained tiny DiT: determinism, the dataset layout, unseen person x condition pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_dit_training import CONDITION_NAMES, PERSON_NAMES, make_tiny_setup, tiny_config

from microdoppler_finetune.dit import checkpointing as C
from microdoppler_finetune.dit.model_setup import load_trained_dit
from microdoppler_finetune.dit.sampling import (
    GRID_FILE,
    INFO_FILE,
    SamplerSettings,
    generate_dataset,
    generate_latents,
    plan_jobs,
    sample_relative_path,
)
from microdoppler_finetune.dit.trainer import train_dit

FAST = SamplerSettings(num_sampling_steps=5, sampler="euler", cfg_scale=2.0, cfg_interval_start=0.1, shift=0.5, seed=3,
                       batch_size=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DiT trained for a few steps on the synthetic cache (3 persons, 2 conditions, one unseen pair)."""
    root = tmp_path_factory.mktemp("dit_sampling")
    export, _ = make_tiny_setup(root)
    train_dit(tiny_config(root, "dit.train.steps=6", "dit.train.val_every=0", "dit.train.checkpoint_every=0"))
    return C.latest_checkpoint(root / "dit" / "checkpoints"), export


def _pixels(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("ID*.jpg"))}


def test_sampling_is_deterministic_for_a_seed_and_independent_of_batch_size(trained):
    checkpoint, _ = trained
    model, info = load_trained_dit(checkpoint)
    shape = info["data"]["latent_shape"]
    persons, conditions = [0, 1, 2, 0, 1], [0, 1, 0, None, None]
    a = generate_latents(model, persons, conditions, shape, FAST)
    b = generate_latents(model, persons, conditions, shape,
                         SamplerSettings(**{**FAST.__dict__, "batch_size": 2}))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    heun = generate_latents(model, persons, conditions, shape, SamplerSettings(**{**FAST.__dict__, "sampler": "heun"}))
    other_seed = generate_latents(model, persons, conditions, shape, SamplerSettings(**{**FAST.__dict__, "seed": 4}))
    assert not torch.allclose(a, heun) and not torch.allclose(a, other_seed)


def test_generated_files_are_read_by_the_data_scanner_with_the_right_person(trained, tmp_path):
    from microdoppler_finetune.data.layouts import LAYOUT_PERSON, scan_dataset

    checkpoint, export = trained
    flat = tmp_path / "flat"
    info = generate_dataset(checkpoint, export, flat, per_person=2, settings=FAST, image_size=24, device="cpu")
    scan = scan_dataset(flat)
    assert scan.layout == LAYOUT_PERSON
    assert scan.persons == PERSON_NAMES
    by_file = {f["file"]: f for f in info["files"]}
    assert len(scan.images) == len(by_file) == 6
    for image in scan.images:
        record = by_file[image.rel_path]
        assert image.person == record["person"] and image.name_person == record["person_id"] + 1
        assert image.frame is not None and image.recording == f"gen{FAST.seed}"
        assert Image.open(image.path).size == (24, 24)
    saved = json.loads((flat / INFO_FILE).read_text())
    assert saved["sampler"]["seed"] == FAST.seed and saved["checkpoint_step"] == 6
    assert (flat / GRID_FILE).is_file()
    # Same seed, new folder: identical pixels.
    again = tmp_path / "again"
    generate_dataset(checkpoint, export, again, per_person=2, settings=FAST, image_size=24, device="cpu")
    first, second = _pixels(flat), _pixels(again)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_unseen_person_condition_pairs_use_the_condition_layout(trained, tmp_path):
    from microdoppler_finetune.data.layouts import LAYOUT_CONDITION_PERSON, scan_dataset

    checkpoint, export = trained
    out = tmp_path / "unseen"
    info = generate_dataset(checkpoint, export, out, per_person=2, conditions="all", pairs="unseen",
                            settings=FAST, device="cpu")
    # Only ID_3 with a backpack was missing from training.
    assert {(f["person"], f["condition"]) for f in info["files"]} == {("ID_3", "Backpack_free")}
    assert all(f["seen_in_training"] is False for f in info["files"])
    scan = scan_dataset(out)
    assert scan.layout == LAYOUT_CONDITION_PERSON
    assert [(i.condition, i.person) for i in scan.images] == [("Backpack_free", "ID_3")] * 2


def test_plan_jobs_selects_persons_conditions_and_pairs():
    data = {"person_names": ["ID_1", "ID_2", "ID_10"], "condition_names": CONDITION_NAMES,
            "seen_pairs": [[0, 0], [1, 0], [1, 1], [2, 0], [2, 1]]}
    jobs = plan_jobs(data, per_person=3, persons="1,ID_10")
    assert [(j.person, j.condition) for j in jobs] == [(0, None)] * 3 + [(2, None)] * 3
    seen = plan_jobs(data, per_person=1, conditions="Backpack_free", pairs="seen", uses_conditions=True)
    assert [(j.person, j.condition) for j in seen] == [(1, 1), (2, 1)]
    with pytest.raises(ValueError, match="Unknown person"):
        plan_jobs(data, per_person=1, persons="ID_4")
    with pytest.raises(ValueError, match="without walking conditions"):
        plan_jobs(data, per_person=1, conditions="all", uses_conditions=False)
    assert sample_relative_path("07", "Bag_free", 2, 5) == "Bag_free/ID_7/ID7_gen2_Doppler5.jpg"


def test_sample_cli_runs_with_a_training_folder(trained, tmp_path):
    from microdoppler_finetune.sample_dit import main

    checkpoint, export = trained
    out = tmp_path / "cli"
    assert main(["--checkpoint", str(checkpoint.parent.parent), "--vae_encoder", str(export), "--out", str(out),
                 "--per_person", "1", "--persons", "ID_2", "--num_sampling_steps", "4", "--sampler", "heun",
                 "--seed", "1", "--device", "cpu"]) == 0
    info = json.loads((out / INFO_FILE).read_text())
    assert [f["file"] for f in info["files"]] == ["ID_2/ID2_gen1_Doppler0.jpg"]
    assert info["sampler"]["sampler"] == "heun" and info["sampler"]["num_sampling_steps"] == 4
    assert info["sampler"]["ode_steps"] == 3  # grid points, as the release counts them: 4 points, 3 steps


def test_sampling_from_the_pretrained_export_equals_sampling_from_the_checkpoint(trained, tmp_path):
    """The run's pretrained/ folder (save_pretrained of the EMA weights) samples exactly what the .pt's EMA does."""
    from microdoppler_finetune.dit.export import resolve_trained_dit

    checkpoint, export = trained
    folder = checkpoint.parent.parent / "pretrained"
    assert resolve_trained_dit(checkpoint.parent.parent) == folder  # the run folder gives its export
    from_pt, pt_info = load_trained_dit(checkpoint)
    from_folder, folder_info = load_trained_dit(folder)
    assert folder_info["step"] == pt_info["step"] == 6 and folder_info["weights"] == pt_info["weights"] == "ema"
    for key in ("person_names", "condition_names", "latent_shape", "image_size", "vae_identity", "seen_pairs"):
        assert folder_info["data"][key] == pt_info["data"][key], key
    assert folder_info["dit_config"] == pt_info["dit_config"]
    shape = pt_info["data"]["latent_shape"]
    persons, conditions = [0, 1, 2, 2], [0, 1, 1, None]
    a = generate_latents(from_pt, persons, conditions, shape, FAST)
    b = generate_latents(from_folder, persons, conditions, shape, FAST)
    assert torch.equal(a, b)
    out_pt, out_folder = tmp_path / "pt", tmp_path / "folder"
    generate_dataset(checkpoint, export, out_pt, per_person=1, settings=FAST, device="cpu")
    info = generate_dataset(folder, export, out_folder, per_person=1, settings=FAST, device="cpu")
    assert info["weights"] == "ema" and info["checkpoint_step"] == 6
    first, second = _pixels(out_pt), _pixels(out_folder)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="ema weights only"):
        load_trained_dit(folder, use_ema=False)
