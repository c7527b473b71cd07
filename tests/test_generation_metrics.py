"""Generation metrics: FID/KID/precision/recall/density/coverage on known point clouds, memorisation, and the
whole evaluate_generation run on a tiny synthetic data set."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch

from microdoppler_finetune.evaluation.generation.metrics import (
    frechet_distance,
    kernel_inception_distance,
    memorisation_report,
    nearest_neighbours,
    precision_recall_density_coverage,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one torch thread (tests/conftest.py)


def gaussian_cloud(n: int, dim: int = 8, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_mean_shift():
    a = gaussian_cloud(400)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    values = [frechet_distance(a, a + shift) for shift in (0.5, 1.0, 2.0)]
    # A pure mean shift of s in every one of 8 dimensions adds exactly 8 s^2.
    assert values == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)
    assert frechet_distance(a, gaussian_cloud(400, seed=1)) < 1.0  # same distribution, other sample


def test_fid_matches_torchmetrics_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    a, b = gaussian_cloud(200), gaussian_cloud(150, shift=0.3, seed=1) * 1.5
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-4)


def test_kid_is_near_zero_for_one_distribution_and_positive_after_a_shift():
    a, b = gaussian_cloud(300), gaussian_cloud(300, seed=1)
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200)
    assert abs(same) < 0.05
    assert shifted > 1.0 and shifted > 20 * abs(same)


def test_precision_recall_density_coverage_on_known_clouds():
    real = gaussian_cloud(200)
    identical = precision_recall_density_coverage(real, real.copy(), k=5)
    assert identical["precision"] == identical["recall"] == identical["coverage"] == 1.0
    assert identical["density"] >= 1.0  # each sample is in its own ball plus its neighbours' balls
    far = precision_recall_density_coverage(real, gaussian_cloud(200, shift=100.0, seed=1), k=5)
    assert far["precision"] == far["recall"] == far["density"] == far["coverage"] == 0.0
    # Mode collapse: all generated samples on one real point -> high precision, low recall and coverage.
    collapsed = precision_recall_density_coverage(real, np.repeat(real[:1], 50, axis=0) + 1e-9, k=5)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1 and collapsed["coverage"] < 0.1


def test_memorisation_distance_is_zero_for_copies_of_training_samples():
    train, test = gaussian_cloud(100), gaussian_cloud(40, seed=1)
    copies = train[[3, 7, 7, 50]]
    report = memorisation_report(copies, train, test, generated_keys=list("abcd"),
                                 train_keys=[f"train:{i}" for i in range(100)])
    assert report["generated_median_distance"] == 0.0 and report["copies"] == 4
    assert report["test_median_distance"] > 0.5
    assert report["median_ratio_generated_to_test"] == 0.0
    assert report["fraction_closer_than_test_p05"] == 1.0
    assert report["closest_pairs"][0]["train"] in {"train:3", "train:7", "train:50"}
    fresh = memorisation_report(gaussian_cloud(40, seed=2), train, test, generated_keys=[str(i) for i in range(40)],
                                train_keys=[str(i) for i in range(100)])
    assert fresh["copies"] == 0 and 0.7 < fresh["median_ratio_generated_to_test"] < 1.4
    distance, index = nearest_neighbours(copies, train)
    assert distance.tolist() == [0.0] * 4 and index.tolist() == [3, 7, 7, 50]


def test_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(gaussian_cloud(1), gaussian_cloud(5))
    with pytest.raises(ValueError, match="Feature sizes differ"):
        frechet_distance(gaussian_cloud(5, dim=3), gaussian_cloud(5, dim=4))
    with pytest.raises(ValueError, match="NaN"):
        kernel_inception_distance(np.full((4, 2), np.nan), gaussian_cloud(4, dim=2))


# ------------------------------------------------------------------------------------------- whole runs

SIZE = 32


def band_image(person: int, recording: int, frame: int) -> np.ndarray:
    """uint8 [32, 32, 3]: a noisy spectrogram-like picture with a person-specific bright band."""
    rng = np.random.default_rng(100 * person + 10 * recording + frame)
    image = rng.uniform(0, 60, size=(SIZE, SIZE, 3))
    row = 6 + 8 * person + (frame % 3)
    image[row:row + 3, :, 0] = 240
    image[:, (recording * 5 + frame) % SIZE, 1] = 200
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """3 people x 4 recordings x 5 frames (flat Kaggle layout), its manifest, and a generated folder holding
    4 byte-identical copies of training images plus 4 fresh images per person."""
    import shutil

    from PIL import Image

    from microdoppler_finetune.data import load_manifest, prepare_dataset

    root = tmp_path_factory.mktemp("generation")
    for p in range(3):
        folder = root / "data" / f"ID_{p + 1}"
        folder.mkdir(parents=True)
        for r in range(4):
            for f in range(5):
                Image.fromarray(band_image(p, r, f)).save(folder / f"ID{p + 1}_case{r + 1}_1_Doppler{f + 1}.jpg")
    prepare_dataset(root / "data", root / "dataset", log=None)
    manifest = load_manifest(root / "dataset")
    train = manifest.entries_for("train")
    for p in range(3):
        folder = root / "generated" / f"ID_{p + 1}"
        folder.mkdir(parents=True)
        for f in range(4):
            Image.fromarray(band_image(p, 9, f)).save(folder / f"fresh_{f}.png")
    copied = [e for e in train if e["person_id"] == 0][:2] + [e for e in train if e["person_id"] == 2][:2]
    for i, entry in enumerate(copied):
        shutil.copy(manifest.image_path(entry), root / "generated" / entry["person"] / f"copy_{i}.jpg")
    return root


def test_evaluate_generation_writes_every_metric_overall_and_per_person(small_dataset):
    from microdoppler_finetune.evaluation.generation.evaluate import evaluate_generation
    from microdoppler_finetune.evaluation.identification.training import IdentificationConfig
    from models.classifier import create_classifier

    torch.manual_seed(0)
    classifier = create_classifier("tiny", num_classes=3, image_size=SIZE).eval()  # random but fixed features
    config = IdentificationConfig(image_size=SIZE, epochs=2, patience=2, batch_size=8)
    out = small_dataset / "metrics"
    results = evaluate_generation(small_dataset / "dataset", small_dataset / "generated", out, classifier=classifier,
                                  config=config, kid_subsets=5, command="evaluate --x", log=None)
    saved = json.loads((out / "generation_metrics.json").read_text())
    assert saved["generated_images"] == results["generated_images"] == 16
    overall = saved["overall"]
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert np.isfinite(overall["generated"][key]) and np.isfinite(overall["real_val_baseline"][key])
    memo = overall["memorisation"]
    assert memo["copies"] == 4 and memo["generated_min_distance"] < 1e-4
    closest = memo["closest_pairs"][:4]
    assert {p["generated"].split("/")[-1] for p in closest} == {f"copy_{i}.jpg" for i in range(4)}
    assert all(p["train"].startswith("ID_") and p["train"].endswith(".jpg") for p in closest)  # manifest paths
    assert set(saved["per_person"]) == {"ID_1", "ID_2", "ID_3"}
    assert saved["per_person"]["ID_1"]["memorisation"]["copies"] == 2
    assert saved["per_person"]["ID_2"]["memorisation"]["copies"] == 0
    assert "fid" in saved["per_person"]["ID_2"]["generated"]
    cas = saved["classification_accuracy_score"]
    assert cas["test_images"] == len(__import__("microdoppler_finetune.data", fromlist=["x"])
                                     .load_manifest(small_dataset / "dataset").entries_for("test"))
    assert 0 <= cas["test_accuracy"] <= 1 and set(cas["per_person"]) <= {"ID_1", "ID_2", "ID_3"}
    assert saved["inception_fid"]["value"] is None and saved["inception_fid"]["status"].startswith("not computed")
    markdown = (out / "generation_metrics.md").read_text()
    assert "Memorisation" in markdown and "ID_3" in markdown and "evaluate --x" in markdown


def test_step6_cli_runs_both_parts_with_the_classifier_of_the_first(small_dataset, capsys):
    from microdoppler_finetune import step6_evaluate

    work = small_dataset / "work"
    summary = step6_evaluate.main([
        "--dataset_dir", str(small_dataset / "dataset"), "--generated", str(small_dataset / "generated"),
        "--work_dir", str(work), "--fractions", "1.0", "--methods", "real,real+generated", "--epochs", "1",
        "--image_size", str(SIZE), "--batch_size", "8", "--no_cas"])
    assert set(summary["identification_test_accuracy"]) == {"real@100%", "real+generated@100%"}
    identification = json.loads((work / "evaluation/identification/identification_results.json").read_text())
    for row in identification["rows"]:
        assert row["command"].startswith("python -m microdoppler_finetune.step6_evaluate --dataset_dir ")
        assert shlex.split(row["command"])[-2:] == ["--variants", row["variant"]]
    assert "cross-condition rows skipped" in " ".join(identification["notes"])
    metrics = json.loads((work / "evaluation/generation/generation_metrics.json").read_text())
    assert "classification_accuracy_score" not in metrics
    assert metrics["overall"]["memorisation"]["copies"] == 4
    assert not (work / "evaluation/generation/feature_classifier").exists()  # reused the 100 % real classifier
    # A row's recorded command reruns that row alone, replaces it in the same table and reproduces it.
    row = identification["rows"][0]
    rerun = shlex.split(row["command"])[3:] + ["--skip_generation_metrics"]
    step6_evaluate.main(rerun)
    again = json.loads((work / "evaluation/identification/identification_results.json").read_text())
    assert [r["variant"] for r in again["rows"]] == [r["variant"] for r in identification["rows"]]
    assert again["rows"][0]["test_accuracy"] == row["test_accuracy"]
    assert again["rows"][0]["confusion_matrix"] == row["confusion_matrix"]
    with pytest.raises(SystemExit):
        step6_evaluate.main(["--dataset_dir", str(small_dataset), "--work_dir", str(work)])  # no manifest there


def test_identifiability_names_the_person_a_generated_sample_was_asked_for(small_dataset):
    """A classifier trained on real images finds the right person in faithful samples and not in mislabelled
    ones; chance and the real test accuracy are reported next to it."""
    from PIL import Image

    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.evaluation.generation.evaluate import identifiability
    from microdoppler_finetune.evaluation.identification.images import load_generated_images, load_split_images
    from microdoppler_finetune.evaluation.identification.training import IdentificationConfig, train_classifier

    manifest = load_manifest(small_dataset / "dataset")
    config = IdentificationConfig(image_size=SIZE, epochs=40, patience=40, batch_size=8, learning_rate=5e-3, seed=0)
    splits = {s: load_split_images(manifest, s, image_size=SIZE) for s in ("train", "val", "test")}
    model, _ = train_classifier([splits["train"]], splits["val"], num_classes=3, config=config, log=None)
    swapped = small_dataset / "generated_swapped"
    for p in range(3):
        folder = swapped / f"ID_{p + 1}"
        folder.mkdir(parents=True)
        for f in range(4):  # person p's folder holds pictures of the next person
            Image.fromarray(band_image((p + 1) % 3, 9, f)).save(folder / f"fresh_{f}.png")
    faithful = load_generated_images(small_dataset / "generated", manifest, image_size=SIZE)
    wrong = load_generated_images(swapped, manifest, image_size=SIZE)
    good, bad = (identifiability(model.eval(), splits["test"], data, manifest) for data in (faithful, wrong))
    assert good["chance"] == pytest.approx(1 / 3) and good["images"] == 16
    assert good["real_test_accuracy"] >= 0.9
    assert good["accuracy"] >= 0.9 and bad["accuracy"] <= 0.2
    assert set(good["per_person"]) == {"ID_1", "ID_2", "ID_3"}


def test_identifiability_behind_the_vae_round_trips_every_split_and_reports_its_ceiling(small_dataset, tmp_path):
    """With step5's export given, a second classifier is trained on VA-VAE round trips of the real images; the
    test images are round-tripped too (its ceiling) and the real test images never train it."""
    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.evaluation.generation.evaluate import evaluate_generation, vae_round_trip
    from microdoppler_finetune.evaluation.identification.images import load_split_images
    from microdoppler_finetune.evaluation.identification.training import IdentificationConfig
    from microdoppler_finetune.latents.export import export_encoder_for_dit, load_exported_vae
    from models.classifier import create_classifier
    from models.vavae import create_vavae

    torch.manual_seed(0)
    export = export_encoder_for_dit(create_vavae("test").eval(), tmp_path / "export", latents_mean=[0.0] * 4,
                                    latents_std=[1.0] * 4, info={"source_checkpoint": "memory"})
    vae = load_exported_vae(export)
    test = load_split_images(load_manifest(small_dataset / "dataset"), "test", image_size=SIZE)
    trip = vae_round_trip(vae, test)
    assert trip.images.shape == test.images.shape and trip.keys == test.keys
    assert not torch.equal(trip.images, test.images)  # a random VA-VAE changes the pictures

    classifier = create_classifier("tiny", num_classes=3, image_size=SIZE).eval()
    config = IdentificationConfig(image_size=SIZE, epochs=2, patience=2, batch_size=8)
    results = evaluate_generation(small_dataset / "dataset", small_dataset / "generated", tmp_path / "metrics",
                                  classifier=classifier, config=config, kid_subsets=5, inception=False,
                                  classification_accuracy_score=False, vae_encoder=export, log=None)
    behind = results["reconstruction_classifier_on_generated"]
    assert behind["chance"] == pytest.approx(1 / 3) and behind["images"] == 16
    assert behind["real_test_accuracy"] is not None and 0 <= behind["accuracy"] <= 1
    assert behind["vae_encoder"] == str(export)
    markdown = (tmp_path / "metrics/generation_metrics.md").read_text()
    assert "Identifiability behind the VA-VAE" in markdown
