"""Distances between two sets of feature vectors: FID, KID, precision/recall/density/coverage, memorisation.

Definitions:

- FID (Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), covariances with N-1.
  Computed in float64 with scipy's sqrtm; a tiny imaginary part from numerical error is dropped. With fewer
  samples than feature dimensions FID is biased upwards: compare each number with a real-vs-real baseline.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
  averaged over random subsets (the recipe of torchmetrics' KernelInceptionDistance).
- Precision, recall, density, coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics"): k-NN
  balls around real samples (radius = distance to the k-th nearest other real sample) and, for recall, around
  generated samples.
- Memorisation: the distance of each generated sample to its nearest real TRAINING sample, next to the same
  distance for real TEST samples (which the generator never saw). Generated samples much closer to the training
  set than fresh real data are, or at distance ~0, are copies.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from scipy import linalg


def _as_2d_float64(features, name: str) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [samples, features], got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf values.")
    return array


def frechet_distance(features_a, features_b) -> float:
    """FID between two feature sets (each needs at least 2 samples)."""
    a = _as_2d_float64(features_a, "features_a")
    b = _as_2d_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sizes differ: {a.shape[1]} vs {b.shape[1]}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}.")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Fewer samples than feature dimensions (per person) makes the product singular; that is expected and
        # documented (compare with the real baseline), not worth a warning per person.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than features): regularise both covariances slightly, as is customary.
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(distance, 0.0)  # rounding can give -1e-12 for identical sets


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    dim = x.shape[1]
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    m, n = len(x), len(y)
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(features_a, features_b, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets); subsets are drawn without replacement, capped at the smaller set's size."""
    a = _as_2d_float64(features_a, "features_a")
    b = _as_2d_float64(features_b, "features_b")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}.")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        subset_a = a[rng.choice(len(a), size, replace=False)]
        subset_b = b[rng.choice(len(b), size, replace=False)]
        values.append(_polynomial_mmd2_unbiased(subset_a, subset_b))
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(x, y) -> np.ndarray:
    """Euclidean distances [len(x), len(y)] (float64)."""
    xt = torch.from_numpy(_as_2d_float64(x, "x"))
    yt = torch.from_numpy(_as_2d_float64(y, "y"))
    return torch.cdist(xt, yt).numpy()


def _kth_neighbour_radius(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each sample to its k-th nearest *other* sample of the same set."""
    distances = pairwise_distances(features, features)
    # Column 0 of each sorted row is the sample itself (distance 0), so the k-th other neighbour is column k.
    return np.sort(distances, axis=1)[:, k]


def precision_recall_density_coverage(real_features, fake_features, *, k: int = 5) -> dict:
    """Naeem et al. (2020) metrics; ``k`` is capped so every set has k other members."""
    real = _as_2d_float64(real_features, "real_features")
    fake = _as_2d_float64(fake_features, "fake_features")
    k_used = min(k, len(real) - 1, len(fake) - 1)
    if k_used < 1:
        raise ValueError(f"Precision/recall need at least 2 real and 2 generated samples, got {len(real)} and "
                         f"{len(fake)}.")
    real_radius = _kth_neighbour_radius(real, k_used)   # [N_real]
    fake_radius = _kth_neighbour_radius(fake, k_used)   # [N_fake]
    real_to_fake = pairwise_distances(real, fake)       # [N_real, N_fake]
    inside_real_balls = real_to_fake <= real_radius[:, None]  # [i, j]: generated j lies in real i's ball
    precision = inside_real_balls.any(axis=0).mean()
    recall = (real_to_fake <= fake_radius[None, :]).any(axis=1).mean()
    density = inside_real_balls.sum() / (k_used * len(fake))
    coverage = (real_to_fake.min(axis=1) <= real_radius).mean()
    return {"precision": float(precision), "recall": float(recall), "density": float(density),
            "coverage": float(coverage), "k": int(k_used)}


def nearest_neighbours(query, reference) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: (distance to, index of) its nearest reference row."""
    distances = pairwise_distances(query, reference)
    index = distances.argmin(axis=1)
    return distances[np.arange(len(index)), index], index


def memorisation_report(generated_features, train_features, test_features, *, generated_keys: Sequence[str],
                        train_keys: Sequence[str], closest: int = 10, copy_tolerance: float = 1e-4) -> dict:
    """Nearest-training-neighbour distances of generated samples vs those of real test samples.

    ``copy_tolerance`` is relative to the median test-to-train distance: a generated sample closer than that to
    a training sample is counted as a copy (identical images give identical features up to float rounding).
    """
    generated_distance, nearest = nearest_neighbours(generated_features, train_features)
    test_distance, _ = nearest_neighbours(test_features, train_features)
    return memorisation_summary(generated_distance, nearest, test_distance, generated_keys=generated_keys,
                                 train_keys=train_keys, closest=closest, copy_tolerance=copy_tolerance)


def memorisation_summary(generated_distance: np.ndarray, nearest: np.ndarray, test_distance: np.ndarray, *,
                          generated_keys: Sequence[str], train_keys: Sequence[str], closest: int = 10,
                          copy_tolerance: float = 1e-4) -> dict:
    test_median = float(np.median(test_distance))
    test_p05 = float(np.percentile(test_distance, 5))
    generated_median = float(np.median(generated_distance))
    order = np.argsort(generated_distance)[:closest]
    return {
        "generated_median_distance": generated_median,
        "generated_p05_distance": float(np.percentile(generated_distance, 5)),
        "generated_min_distance": float(generated_distance.min()),
        "test_median_distance": test_median,
        "test_p05_distance": test_p05,
        # < 1: generated samples sit closer to the training set than unseen real data does.
        "median_ratio_generated_to_test": generated_median / test_median if test_median > 0 else float("nan"),
        "fraction_closer_than_test_p05": float((generated_distance < test_p05).mean()),
        "copies": int((generated_distance <= copy_tolerance * max(test_median, 1e-12)).sum()),
        "generated_images": int(len(generated_distance)),
        "test_images": int(len(test_distance)),
        "closest_pairs": [{"generated": generated_keys[i], "train": train_keys[int(nearest[i])],
                           "distance": float(generated_distance[i])} for i in order],
    }


# ------------------------------------------------------------------------------------------- features
