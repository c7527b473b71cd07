"""Identification classifier and the "does generated data help?" experiments, on tiny synthetic spectrograms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microdoppler_finetune.evaluation.identification.images import LabelledImages, select_fraction_by_recording
from microdoppler_finetune.evaluation.identification.training import (
    IdentificationConfig,
    conventional_augment,
    train_classifier,
)
from models.classifier import CLASSIFIER_PRESETS, SpectrogramClassifier, create_classifier, load_classifier

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one torch thread (tests/conftest.py)


def synthetic_spectrogram(person: int, recording: int, frame: int, size: int = SIZE) -> np.ndarray:
    """uint8 [H, W, 3]: a bright sinusoidal 'torso + limbs' trace whose cadence and spread depend on the person."""
    rng = np.random.default_rng(1000 * person + 37 * recording + frame)
    t = np.arange(size)
    image = rng.uniform(0, 40, size=(size, size)).astype(np.float64)
    cadence = 1.0 + 0.75 * person
    amplitude = size * (0.12 + 0.06 * (person % 3))
    phase = 0.7 * recording + 0.3 * frame
    trace = size / 2 + amplitude * np.sin(2 * np.pi * cadence * t / size + phase)
    torso = size // 2 + 2 * (person % 4) - 3  # each person's mean (torso) Doppler differs a little
    for column, row in enumerate(trace):
        low, high = int(max(0, row - 1)), int(min(size, row + 2))
        image[low:high, column] = 230
        image[torso - 1:torso + 1, column] = 160
    red = np.clip(image, 0, 255)
    blue = np.clip(255 - image * 0.8, 0, 255)
    return np.stack([red, image * 0.6, blue], axis=-1).astype(np.uint8)


def labelled(persons: int, recordings: int, frames: int, *, source: str = "real:train",
             recording_offset: int = 0) -> LabelledImages:
    images, person_ids, keys, records = [], [], [], []
    for p in range(persons):
        for r in range(recording_offset, recording_offset + recordings):
            for f in range(frames):
                images.append(torch.from_numpy(synthetic_spectrogram(p, r, f)).permute(2, 0, 1))
                person_ids.append(p)
                keys.append(f"{source}:{p}/{r}/{f}")
                records.append(f"{p}/0/case{r}")
    n = len(images)
    return LabelledImages(torch.stack(images), torch.tensor(person_ids), torch.zeros(n, dtype=torch.long), keys,
                          records, source)


def write_dataset(root: Path, persons: int, recordings: int, frames: int, conditions=None) -> Path:
    """The Kaggle layout <root>/ID_n/IDn_case<r>_1_Doppler<f>.jpg (or <root>/<condition>/ID_n/... )."""
    for c, condition in enumerate(conditions or [None]):
        for p in range(persons):
            folder = root / (condition or "") / f"ID_{p + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for r in range(recordings):
                for f in range(frames):
                    pixels = synthetic_spectrogram(p, r + 10 * c, f)
                    if c:  # the other condition looks different (a damped trace), as a backpack would
                        pixels = (pixels * 0.7).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"ID{p + 1}_case{r + 1}_1_Doppler{f + 1}.jpg", quality=95)
    return root


# ------------------------------------------------------------------------------------------- the model


def test_presets_build_and_save_load_round_trip(tmp_path):
    for name in CLASSIFIER_PRESETS:
        model = create_classifier(name, num_classes=5)
        assert model.head.out_features == 5 and model.feature_dim == CLASSIFIER_PRESETS[name]["channels"][-1]
    model = create_classifier("tiny", num_classes=4, image_size=SIZE).eval()
    images = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    model.save_pretrained(tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    assert isinstance(loaded, SpectrogramClassifier) and not loaded.training
    assert loaded.config.image_size == SIZE and list(loaded.config.channels) == [16, 32, 64, 128]
    torch.testing.assert_close(loaded(images), model(images))
    torch.testing.assert_close(loaded.features(images), model.features(images))
    assert model.features(images).shape == (3, model.feature_dim)


def test_classifier_refuses_bad_configs_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        create_classifier("tiny")
    with pytest.raises(KeyError, match="Unknown classifier preset"):
        create_classifier("huge", num_classes=3)
    with pytest.raises(ValueError, match="stem_width"):
        create_classifier("standard", num_classes=3, stem_width=32)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        create_classifier("tiny", num_classes=3)(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_classifier(tmp_path)


# ------------------------------------------------------------------------------------------- training


def test_classifier_learns_separable_synthetic_classes_well_above_chance():
    persons = 4
    train = labelled(persons, recordings=5, frames=8)
    val = labelled(persons, recordings=1, frames=6, source="real:val", recording_offset=7)  # unseen recordings
    config = IdentificationConfig(image_size=SIZE, epochs=10, patience=10, batch_size=16, seed=0)
    model, history = train_classifier([train], val, num_classes=persons, config=config, log=None)
    assert history["best_val_accuracy"] >= 0.9  # chance is 0.25
    best = history["epochs"][history["best_epoch"] - 1]
    assert best["val_accuracy"] == history["best_val_accuracy"]
    # The returned model is the best validation epoch's, in eval mode.
    assert not model.training
    predicted = model(val.float_images()).argmax(1)
    assert (predicted == val.person_ids).float().mean().item() == pytest.approx(history["best_val_accuracy"])


def test_training_refuses_held_out_images():
    train = labelled(2, recordings=1, frames=3)
    val = labelled(2, recordings=1, frames=2, source="real:val", recording_offset=4)
    config = IdentificationConfig(image_size=SIZE, epochs=1, batch_size=4)
    with pytest.raises(RuntimeError, match="held-out"):
        train_classifier([train], val, num_classes=2, config=config, forbidden_keys=[train.keys[0]], log=None)


def test_real_fraction_keeps_whole_recordings_is_seeded_and_nested():
    data = labelled(3, recordings=8, frames=4)
    quarter = select_fraction_by_recording(data, 0.25, seed=1)
    assert quarter == select_fraction_by_recording(data, 0.25, seed=1)
    assert quarter != select_fraction_by_recording(data, 0.25, seed=2)
    chosen_recordings = {data.recordings[i] for i in quarter}
    # Whole recordings: every frame of a chosen recording is in, none of the others.
    assert sorted(quarter) == sorted(i for i, r in enumerate(data.recordings) if r in chosen_recordings)
    assert len(chosen_recordings) == 3 * 2  # round(0.25 x 8) recordings per person
    assert {int(data.person_ids[i]) for i in quarter} == {0, 1, 2}
    half = select_fraction_by_recording(data, 0.5, seed=1)
    assert set(quarter) <= set(half)
    assert select_fraction_by_recording(data, 1.0) == list(range(len(data)))
    assert len({data.recordings[i] for i in select_fraction_by_recording(data, 0.01)}) == 3  # >= 1 per person
    with pytest.raises(ValueError):
        select_fraction_by_recording(data, 0.0)


def test_conventional_augmentation_shifts_time_and_doppler_without_flipping():
    images = labelled(1, recordings=1, frames=4).float_images()
    none = IdentificationConfig(max_time_shift=0.0, max_doppler_shift=0.0, intensity_jitter=0.0)
    torch.testing.assert_close(conventional_augment(images, none), images)
    time_only = IdentificationConfig(max_time_shift=0.5, max_doppler_shift=0.0, intensity_jitter=0.0)
    rolled = conventional_augment(images, time_only, torch.Generator().manual_seed(0))
    assert not torch.equal(rolled, images)
    # A circular roll along time keeps every row's values (a flip would too, but also reverses their order:
    # the rolled row must be some rotation of the original one).
    for original, shifted in zip(images, rolled):
        row, new_row = original[0, 5], shifted[0, 5]
        assert any(torch.equal(torch.roll(row, s), new_row) for s in range(SIZE))
    full = conventional_augment(images, IdentificationConfig(), torch.Generator().manual_seed(0))
    assert full.shape == images.shape and full.min() >= -1 and full.max() <= 1


# ------------------------------------------------------------------------------------------- with a manifest

CONDITIONS = ["Normal_free", "Backpack_free"]


def write_generated(root: Path, persons: dict, conditions=None, frames: int = 4) -> Path:
    """Generated-looking images: {folder name: person index}, optionally under condition folders."""
    for c, condition in enumerate(conditions or [None]):
        for name, p in persons.items():
            folder = root / (condition or "") / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                pixels = synthetic_spectrogram(p, 50 + 10 * c, f)
                if c:
                    pixels = (pixels * 0.7).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"sample_{f:03d}.png")
    return root


@pytest.fixture(scope="module")
def condition_dataset(tmp_path_factory):
    from microdoppler_finetune.data import prepare_dataset

    root = tmp_path_factory.mktemp("identification")
    write_dataset(root / "data", persons=3, recordings=4, frames=5, conditions=CONDITIONS)
    prepare_dataset(root / "data", root / "dataset", log=None)
    write_generated(root / "generated", {"ID_1": 0, "ID_2": 1, "ID_3": 2}, conditions=CONDITIONS)
    return root


def test_generated_person_folders_map_to_manifest_ids_by_name(condition_dataset, tmp_path):
    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.evaluation.identification.images import load_generated_images

    manifest = load_manifest(condition_dataset / "dataset")
    assert manifest.person_names == ["ID_1", "ID_2", "ID_3"]
    # Only two people, one spelled differently, in a flat layout: ids come from the names, not the order.
    write_generated(tmp_path / "flat", {"ID3": 2, "ID_2": 1}, frames=3)
    generated = load_generated_images(tmp_path / "flat", manifest, image_size=SIZE)
    by_folder = {Path(k).parent.name: int(p) for k, p in zip(generated.keys, generated.person_ids)}
    assert by_folder == {"ID3": 2, "ID_2": 1}
    assert set(generated.condition_ids.tolist()) == {-1}  # no condition folders, two conditions in the manifest
    assert generated.images.shape == (6, 3, SIZE, SIZE) and generated.images.dtype == torch.uint8
    with_conditions = load_generated_images(condition_dataset / "generated", manifest, image_size=SIZE,
                                            max_per_person=5)
    assert len(with_conditions) == 15
    names = {k.split("/")[-3] for k, c in zip(with_conditions.keys, with_conditions.condition_ids.tolist()) if c == 1}
    assert names == {"Backpack_free"}
    write_generated(tmp_path / "stranger", {"ID_9": 0}, frames=1)
    with pytest.raises(ValueError, match="ID_9"):
        load_generated_images(tmp_path / "stranger", manifest, image_size=SIZE)
    # A real test image dropped into the generated folder would be trained on: refused.
    test_entry = manifest.entries_for("test")[0]
    shutil.copy(manifest.image_path(test_entry), tmp_path / "flat" / "ID_2" / "leaked.jpg")
    with pytest.raises(ValueError, match="validation/test images"):
        load_generated_images(tmp_path / "flat", manifest, image_size=SIZE)


def test_identification_experiments_share_one_test_set_and_never_train_on_it(condition_dataset):
    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.evaluation.identification.experiments import run_identification_experiments

    out = condition_dataset / "experiments"
    config = IdentificationConfig(image_size=SIZE, epochs=2, patience=2, batch_size=16)
    results = run_identification_experiments(condition_dataset / "dataset", condition_dataset / "generated", out,
                                             fractions=(0.5, 1.0), config=config, command="step6 --x 1", log=None)
    manifest = load_manifest(condition_dataset / "dataset")
    test_entries = manifest.entries_for("test")
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"real@50%", "real@100%", "real+generated@50%", "real+generated@100%",
                         "real+augmentation@50%", "real+augmentation@100%",
                         # every ordered pair of the data's conditions, whatever they are called
                         "cross-condition:Normal_free->Backpack_free", "cross-condition:Backpack_free->Normal_free",
                         "cross-condition:Normal_free+generated-Backpack_free->Backpack_free",
                         "cross-condition:Backpack_free+generated-Normal_free->Normal_free"}
    # One test set for every row.
    assert {r["test_images"] for r in rows.values()} == {len(test_entries)}
    assert len({r["test_set_fingerprint"] for r in rows.values()}) == 1
    # No test (or val) image was trained on: real training keys all come from the train split.
    trained_on = json.loads((out / "identification_train_keys.json").read_text())
    train_indices = {e["index"] for e in manifest.entries_for("train")}
    for variant, keys in trained_on.items():
        real = [k for k in keys if k.startswith(("train:", "val:", "test:"))]
        assert real and all(k.startswith("train:") and int(k.split(":")[1]) in train_indices for k in real), variant
        assert not {f"test:{e['index']}" for e in test_entries} & set(keys)
    assert rows["real@50%"]["real_images"] < rows["real@100%"]["real_images"] == len(train_indices)
    assert rows["real+generated@100%"]["generated_images"] == 24
    assert rows["real+augmentation@100%"]["augmentation"] and not rows["real@100%"]["augmentation"]
    # Cross-condition: Normal training images only; generated Backpack images only; target = Backpack test.
    cross, cross_generated = rows["cross-condition:Normal_free->Backpack_free"], \
        rows["cross-condition:Normal_free+generated-Backpack_free->Backpack_free"]
    normal_train = [e for e in manifest.entries_for("train") if e["condition"] == "Normal_free"]
    assert cross["real_images"] == cross_generated["real_images"] == len(normal_train)
    assert cross_generated["generated_images"] == 12
    backpack_test = [e for e in test_entries if e["condition"] == "Backpack_free"]
    assert cross["target_test_images"] == len(backpack_test)
    assert all(k.startswith("train:") and manifest.entries[int(k.split(":")[1])]["condition"] == "Normal_free"
               for k in trained_on[cross["variant"]])
    for row in rows.values():
        assert row["command"].startswith("step6 --x 1 --variants ") and 0 <= row["test_accuracy"] <= 1
        assert len(row["confusion_matrix"]) == 3 and sum(map(sum, row["confusion_matrix"])) == len(test_entries)
    markdown = (out / "identification_results.md").read_text()
    assert all(name in markdown for name in rows)
    assert load_classifier(out / "feature_classifier").config.num_classes == 3
    with pytest.raises(ValueError, match="Unknown variants"):
        run_identification_experiments(condition_dataset / "dataset", None, out, config=config,
                                       variants=["real+generated@100%"], log=None)
