"""Reconstruction metrics of step5 against values known in closed form, and the latent-space numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from microdoppler_finetune.data.dataset import evenly_spaced_subset
from microdoppler_finetune.evaluation import latent_map as LT
from microdoppler_finetune.evaluation import reconstruction as R
from microdoppler_finetune.latents import statistics as LS
from microdoppler_finetune.utils.images import psnr_uint8, to_uint8_hwc
from microdoppler_finetune.utils.plain import to_plain


def _uint8_batch(seed: int = 0, n: int = 3, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Values away from 0/255 so adding noise never clips (the expected MSE stays exact).
    return rng.integers(20, 230, size=(n, size, size, 3), dtype=np.uint8)


def test_to_uint8_maps_the_model_range_to_file_levels():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.7, -3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    got = to_uint8_hwc(x)[0, 0, :, 0].tolist()
    # (x+1)*127.5 rounded: -1 -> 0, -0.5 -> 63.75 -> 64, 0 -> 127.5 -> 128 (half to even), 1 -> 255; clamped.
    assert got == [0, 64, 128, 255, 255, 0]
    assert to_uint8_hwc(x).shape == (1, 1, 6, 3)


def test_psnr_of_a_known_noise_level():
    a = _uint8_batch()
    rng = np.random.default_rng(1)
    sign = rng.choice([-1, 1], size=a.shape)
    b = (a.astype(int) + 5 * sign).astype(np.uint8)  # every pixel off by exactly 5 levels
    expected = 10 * math.log10(255**2 / 25)  # 34.151 dB
    np.testing.assert_allclose(psnr_uint8(a, b), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(R.mse_uint8(a, b), 25 / 255**2, rtol=1e-12)
    ssim = R.ssim_uint8(a, b)
    assert ((ssim > 0.5) & (ssim < 1.0)).all()


def test_identical_images_give_infinite_psnr_and_ssim_one_without_breaking_the_report():
    a = _uint8_batch()
    assert np.isinf(psnr_uint8(a, a)).all()
    np.testing.assert_allclose(R.ssim_uint8(a, a), 1.0)
    assert (R.mse_uint8(a, a) == 0).all()

    records = R.ReconstructionRecords()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)
    records.add(images, images, person_id=[0, 0], condition_id=[0, 0], index=[0, 1])  # exact copies
    records.add(images, noisy, person_id=[1, 1], condition_id=[0, 0], index=[2, 3])
    summary = records.summary(["alice", "bob"], ["normal"])
    assert summary["per_person"]["alice"]["psnr"] == math.inf
    assert summary["per_person"]["alice"]["ssim"] == pytest.approx(1.0)
    assert math.isfinite(summary["per_person"]["bob"]["psnr"])
    assert math.isfinite(summary["overall"]["psnr_from_mean_mse"])  # finite: not every image is exact
    # The JSON stays standard JSON (no Infinity token) and the Markdown says inf.
    text = json.dumps(to_plain({"splits": {"val": summary}}, finite=True), allow_nan=False)
    assert '"psnr": "inf"' in text
    markdown = R.metrics_markdown({"splits": {"val": summary}}, "t")
    assert "| alice | 2 | inf | 1.000 |" in markdown


def test_group_summaries_average_the_right_images():
    a = _uint8_batch(n=4)
    b = a.copy()
    b[2:] = (a[2:].astype(int) + 10).astype(np.uint8)  # persons 1's two images off by 10 levels
    b[:2] = (a[:2].astype(int) + 2).astype(np.uint8)  # person 0's images off by 2
    to_model = lambda u: torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    records = R.ReconstructionRecords()
    records.add(to_model(a), to_model(b), person_id=[0, 0, 1, 1], condition_id=[0, 1, 0, 1], index=[0, 1, 2, 3])
    summary = records.summary(["p0", "p1"], ["c0", "c1"])
    assert summary["per_person"]["p0"]["psnr"] == pytest.approx(10 * math.log10(255**2 / 4), abs=1e-6)
    assert summary["per_person"]["p1"]["psnr"] == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-6)
    assert summary["per_condition"]["c0"]["count"] == 2
    assert summary["overall"]["mse"] == pytest.approx((4 + 100) / 2 / 255**2)


def test_evaluate_reconstruction_is_driven_by_the_reconstruct_function():
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    dataset = [{"image": images[i], "person_id": i % 2, "condition_id": 0, "index": i} for i in range(5)]
    exact = R.evaluate_reconstruction(lambda x: x, dataset, batch_size=2)
    assert len(exact) == 5 and all(math.isinf(v) for v in exact.psnr)
    blurred = R.evaluate_reconstruction(lambda x: torch.zeros_like(x), dataset, batch_size=2)
    assert max(blurred.psnr) < 15 and exact.index == [0, 1, 2, 3, 4]
    subset = evenly_spaced_subset(dataset, 3)
    assert [item["index"] for item in subset] == [0, 2, 4]


def test_lpips_is_reported_unavailable_offline_and_used_when_its_weights_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    missing = R.load_lpips_metric("alex", download=False)
    assert not missing.available and missing.description.startswith("unavailable")

    from models.perceptual import write_random_backbone_weights

    write_random_backbone_weights("alex")  # stands in for torchvision's file (values are not the real metric)
    metric = R.load_lpips_metric("alex", download=False)
    assert metric.available
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    records = R.evaluate_reconstruction(lambda x: x, [{"image": im, "person_id": 0, "condition_id": 0, "index": i}
                                                      for i, im in enumerate(images)], lpips_metric=metric)
    assert records.lpips == pytest.approx([0.0, 0.0], abs=1e-6)


def test_display_positions_mix_people_and_conditions():
    persons = [0] * 6 + [1] * 6 + [2] * 6
    conditions = [0, 0, 0, 1, 1, 1] * 3
    chosen = R.display_positions(persons, conditions, 6)
    pairs = {(persons[i], conditions[i]) for i in chosen}
    assert len(chosen) == 6 and len(set(chosen)) == 6
    assert pairs == {(p, c) for p in range(3) for c in range(2)}
    everything = R.display_positions(persons, conditions, 100)
    assert sorted(everything) == list(range(18))  # asking for more than there is gives every item once
    assert R.display_positions(persons, conditions, 6) == chosen  # deterministic


def test_reconstruction_figure_is_written(tmp_path):
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    path = R.save_reconstruction_figure(images, images.flip(-1), ["a", "b", "c"], tmp_path / "fig.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000


# ------------------------------------------------------------------------------------------- latent space


def test_channel_statistics_match_torch_over_batches():
    z = torch.randn(10, 4, 3, 3) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1) + 7
    stats = LS.ChannelStatistics()
    for chunk in z.split(3):
        stats.update(chunk)
    torch.testing.assert_close(stats.mean(), z.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stats.std(), z.permute(1, 0, 2, 3).reshape(4, -1).std(dim=1, unbiased=False))
    summary = LS.statistics_summary(stats.mean(), stats.std(), z)
    assert len(summary["latents_mean"]) == 4 and summary["near_constant_channels"] == []


def test_knn_separability_and_map_on_separated_people(tmp_path):
    torch.manual_seed(0)
    centres = torch.randn(3, 4, 2, 2) * 5
    train = torch.cat([centres[p] + 0.3 * torch.randn(8, 4, 2, 2) for p in range(3)])
    val = torch.cat([centres[p] + 0.3 * torch.randn(4, 4, 2, 2) for p in range(3)])
    train_y, val_y = [p for p in range(3) for _ in range(8)], [p for p in range(3) for _ in range(4)]
    scores = LT.person_separability(train, train_y, val, val_y, k=3, person_names=["a", "b", "c"])
    assert scores["flat"]["accuracy"] == 1.0 and scores["flat"]["chance"] == pytest.approx(1 / 3)
    assert set(scores["flat"]["per_person_accuracy"]) == {"a", "b", "c"}
    shuffled = LT.knn_person_accuracy(LT.latent_features(train, "flat"), train_y,
                                      LT.latent_features(val, "flat"), [(y + 1) % 3 for y in val_y], k=3)
    assert shuffled["accuracy"] == 0.0  # labels that do not follow the clusters are not "separable"
    coords = LT.embed_2d(LT.latent_features(torch.cat([train, val]), "flat"))
    assert coords.shape == (36, 2)
    path = LT.save_latent_map(coords, train_y + val_y, tmp_path / "map.png", is_eval=[False] * 24 + [True] * 12,
                              person_names=["a", "b", "c"])
    assert path.is_file()
