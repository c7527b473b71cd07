"""Generation metrics: FID/KID/precision/recall/density/coverage on known point clouds, memorisation, and the
whole evaluate_generation run on a tiny synthetic data set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from microdoppler_finetune.evaluate_generation import (frechet_distance, kernel_inception_distance,
                                                       memorisation_report, nearest_neighbours,
                                                       precision_recall_density_coverage)


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
