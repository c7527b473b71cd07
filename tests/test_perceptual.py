"""Offline LPIPS: backbone weights from torchvision's cache file, clear errors, a marked random fallback.

Every test points TORCH_HOME at its own tmp folder and blocks the network, so nothing here can download or
read a real cache.
"""
import socket
import time
import urllib.error

import lpips
import pytest
import torch
import torchvision

from models import perceptual as P


@pytest.fixture(autouse=True)
def offline_scratch_torch_home(tmp_path, monkeypatch):
    """TORCH_HOME in tmp_path, and any connection or name lookup fails (and is recorded)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts


class NotATensor:
    """Any pickled object: weights_only loading must refuse it."""


def _images(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g) * 2 - 1


def test_cache_path_follows_torch_home(tmp_path):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert P.backbone_weights_path("vgg") == hub / "vgg16-397923af.pth"
    assert P.backbone_weights_path("alex") == hub / "alexnet-owt-7be5be79.pth"
    with pytest.raises(ValueError, match="Unknown LPIPS backbone"):
        P.backbone_weights_path("resnet")


def test_missing_backbone_is_a_clear_error_without_network(offline_scratch_torch_home):
    with pytest.raises(P.LPIPSBackboneMissing) as err:
        P.create_lpips("alex", download=False)
    message = str(err.value)
    assert str(P.backbone_weights_path("alex")) in message and "TORCH_HOME" in message
    assert "allow_random_backbone=True" in message
    assert offline_scratch_torch_home == []  # download=False: not even a lookup


def test_failed_download_is_reported_quickly(offline_scratch_torch_home):
    start = time.monotonic()
    with pytest.raises(P.LPIPSBackboneMissing, match="A download was tried"):
        P.create_lpips("alex")  # download=True: blocked by the fixture, as on an offline machine
    assert time.monotonic() - start < 10
    assert offline_scratch_torch_home, "the download attempt should have reached the (blocked) network"
    assert not P.backbone_weights_path("alex").exists()  # no partial file left behind


def test_download_failure_from_urllib_is_caught(monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(P.LPIPSBackboneMissing, match="URLError"):
        P.create_lpips("alex")


def test_random_backbone_is_marked_and_keeps_the_package_heads():
    with pytest.warns(RuntimeWarning, match="RANDOMLY INITIALISED backbone"):
        model = P.create_lpips("alex", allow_random_backbone=True, download=False)
    assert model.backbone_pretrained is False and "RANDOM" in model.backbone_source
    heads = torch.load(P.package_linear_weights_path("alex"), map_location="cpu", weights_only=True)
    for i, head in enumerate(model.lins):
        assert torch.equal(head.model[1].weight, heads[f"lin{i}.model.1.weight"])
    x = _images()
    assert model(x, x).abs().max().item() == 0.0


def test_cached_random_weights_load_and_behave_like_lpips():
    path = P.write_random_backbone_weights("alex", seed=3)
    assert path == P.backbone_weights_path("alex")
    model = P.create_lpips("alex")
    assert model.backbone_pretrained is True and str(path) in model.backbone_source
    cached = torch.load(path, weights_only=True)
    assert torch.equal(model.net.slice1[0].weight, cached["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, cached["features.10.bias"])

    x, y = _images(0), _images(1)
    same, different = model(x, x), model(x, y)
    assert same.shape == (2, 1, 1, 1) and same.abs().max().item() == 0.0
    assert (different > 0).all()
    # Frozen and always in eval mode (dropout off), but differentiable with respect to the images.
    model.train()
    assert not model.training and all(not m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    y.requires_grad_(True)
    model(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert torch.equal(model(x, y.detach()), model(x, y.detach()))


def test_full_torchvision_checkpoint_is_where_torchvision_looks():
    path = P.write_random_backbone_weights("alex", seed=1, trunk_only=False)
    try:
        # torchvision itself finds the file (no download: the network is blocked) and loads it strictly.
        backbone = torchvision.models.alexnet(weights=torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
        model = P.create_lpips("alex")
        assert torch.equal(getattr(model.net.slice3, "6").weight, backbone.features[6].weight)
        # And the lpips package's own loading path (torchvision cache + its heads) gives the same distances.
        with pytest.warns(UserWarning):  # lpips passes torchvision the deprecated `pretrained=` argument
            reference = lpips.LPIPS(net="alex", verbose=False)
        x, y = _images(0), _images(1)
        assert torch.equal(model(x, y), reference(x, y))
    finally:
        path.unlink()  # 233 MB: do not leave it in pytest's kept temp folders


def test_vgg_backbone_from_cache():
    P.write_random_backbone_weights("vgg")
    model = P.create_lpips("vgg")
    assert model.net_name == "vgg" and model.backbone_pretrained
    x = _images(size=32)
    assert model(x, x).abs().max().item() == 0.0
    assert (model(x, _images(1, size=32)) > 0).all()


def test_wrong_or_pickled_backbone_files_are_refused():
    path = P.backbone_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, path)
    with pytest.raises(ValueError, match="missing keys"):
        P.create_lpips("alex")

    torch.save({"features.0.weight": NotATensor()}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        P.create_lpips("alex")


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_package_defaults_would_need_the_network():
    # Why create_lpips exists: lpips.LPIPS() asks torchvision for the ImageNet weights, which fails offline.
    with pytest.raises(OSError):
        lpips.LPIPS(net="alex", verbose=False)
