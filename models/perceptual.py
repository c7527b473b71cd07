"""LPIPS (the ``lpips`` package) that can be built without network access.

LPIPS has two sets of weights:

* the small linear heads calibrated on human judgements, shipped inside the ``lpips`` package
  (``lpips/weights/v0.1/<net>.pth``): always available, loaded here with ``weights_only=True``;
* the ImageNet backbone (torchvision VGG16 or AlexNet), which torchvision downloads into the torch hub cache
  ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``). Offline machines do not have it.

:func:`create_lpips` never lets ``lpips``/torchvision download anything: it builds LPIPS with a random backbone
and loads the backbone itself from torchvision's cache file. When that file is absent it tries one download
with a short timeout (unless ``download=False``), then either stops with an error naming the file to provide,
or — only with ``allow_random_backbone=True`` — keeps the random backbone and marks the model
``backbone_pretrained = False`` so every report can say that its LPIPS numbers are not the real metric.
"""
from __future__ import annotations

import os
import re
import socket
import warnings
import zipfile
from pathlib import Path

import lpips
import torch
import torchvision

# LPIPS backbone name -> the torchvision weights whose cache file it needs.
_BACKBONE_WEIGHTS = {
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,  # vgg16-397923af.pth
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,  # alexnet-owt-7be5be79.pth
}
_BACKBONE_BUILDERS = {"vgg": torchvision.models.vgg16, "alex": torchvision.models.alexnet}
# torchvision's checkpoints carry a classifier head that LPIPS does not use: those keys are expected and skipped.
_UNUSED_BACKBONE_PREFIX = "classifier."


class LPIPSBackboneMissing(FileNotFoundError):
    """The torchvision backbone weights LPIPS needs are not in the torch hub cache and could not be fetched."""


class FrozenLPIPS(lpips.LPIPS):
    """LPIPS with every weight frozen and permanently in eval mode.

    Eval mode is forced because LPIPS's linear heads have dropout: a training-mode LPIPS would give a random
    loss. Gradients still flow to the input images (that is how it serves as a loss).

    ``forward(x, y)`` takes two [B,3,H,W] batches in [-1, 1] and returns per-sample distances [B,1,1,1].
    Attributes for reports: ``net_name``, ``backbone_pretrained`` and ``backbone_source``.
    """

    net_name: str
    backbone_pretrained: bool
    backbone_source: str

    def train(self, mode: bool = True) -> FrozenLPIPS:
        return super().train(False)


def backbone_weights_path(net: str) -> Path:
    """Where torchvision keeps (and looks for) the backbone weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    weights = _weights_enum(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def package_linear_weights_path(net: str) -> Path:
    """The linear-head weights shipped inside the ``lpips`` package (version 0.1)."""
    _weights_enum(net)
    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def write_random_backbone_weights(net: str, *, seed: int = 0, trunk_only: bool = True,
                                  path: Path | None = None) -> Path:
    """Save randomly initialised torchvision backbone weights where :func:`create_lpips` looks for them.

    For tests and offline demos only (point ``TORCH_HOME`` at a scratch folder first): the file stands in for
    the ImageNet weights, so the resulting LPIPS values are NOT the real metric. ``trunk_only`` keeps just the
    convolutional ``features.*`` weights that LPIPS uses (AlexNet 10 MB instead of 233 MB, VGG16 59 MB instead
    of 528 MB); with ``trunk_only=False`` the file is a complete torchvision state dict that torchvision
    itself would also load.
    """
    builder = _BACKBONE_BUILDERS[_checked_net(net)]
    torch.manual_seed(seed)
    state = builder(weights=None).state_dict()
    if trunk_only:
        state = {k: v for k, v in state.items() if not k.startswith(_UNUSED_BACKBONE_PREFIX)}
    target = Path(path) if path is not None else backbone_weights_path(net)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


def create_lpips(net: str = "vgg", *, allow_random_backbone: bool = False, download: bool = True,
                 download_timeout: float = 10.0, trust_pickle: bool = False) -> FrozenLPIPS:
    """Frozen, eval-mode LPIPS v0.1 (``net`` = "vgg" as in the VA-VAE training, or "alex").

    Backbone weights come from torchvision's cache file (:func:`backbone_weights_path`). When it is missing,
    one download is tried (``download=True``, each network operation limited to ``download_timeout`` seconds;
    the file is checked against the hash in its name). If that fails: with ``allow_random_backbone=False`` an
    :class:`LPIPSBackboneMissing` error says which file to provide; with ``allow_random_backbone=True`` the
    backbone stays random, a warning is issued and ``model.backbone_pretrained`` is False.
    """
    net = _checked_net(net)
    model = _lpips_with_random_backbone(net)
    _load_linear_heads(model, net)
    path = backbone_weights_path(net)
    problem = None
    if not path.is_file() and download:
        problem = _try_download(net, path, download_timeout)
    if path.is_file():
        _load_backbone(model, net, path, trust_pickle=trust_pickle)
        model.backbone_pretrained, model.backbone_source = True, f"torchvision weights from {path}"
    elif allow_random_backbone:
        model.backbone_pretrained, model.backbone_source = False, f"RANDOM backbone (no file at {path})"
        warnings.warn(
            f"LPIPS ({net}) uses a RANDOMLY INITIALISED backbone: {path} is missing"
            f"{' and ' + problem if problem else ''}. Its values are not the LPIPS metric; do not report them "
            f"as LPIPS. Provide the file to get the real metric.", RuntimeWarning, stacklevel=2)
    else:
        raise LPIPSBackboneMissing(_missing_message(net, path, problem))
    model.net_name = net
    model.requires_grad_(False)
    return model.eval()


# ----------------------------------------------------------------------------------------------- internals


def _checked_net(net: str) -> str:
    if net not in _BACKBONE_WEIGHTS:
        raise ValueError(f"Unknown LPIPS backbone '{net}'. Use one of: {', '.join(_BACKBONE_WEIGHTS)}.")
    return net


def _weights_enum(net: str):
    return _BACKBONE_WEIGHTS[_checked_net(net)]


def _lpips_with_random_backbone(net: str) -> FrozenLPIPS:
    # pnet_rand=True and pretrained=False: lpips must neither download the backbone nor read its heads with a
    # pickle-enabled torch.load; both are loaded below under our own checks.
    with warnings.catch_warnings():
        # lpips still calls torchvision with the deprecated `pretrained=` argument; nothing we can act on.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        return FrozenLPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)


def _load_linear_heads(model: FrozenLPIPS, net: str) -> None:
    path = package_linear_weights_path(net)
    if not path.is_file():
        raise FileNotFoundError(f"The lpips package has no linear weights at {path}. Reinstall it: "
                                f"pip install --force-reinstall lpips")
    # The package's files are legacy-format with CUDA storages: map to CPU.
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {f"lin{i}.model.1.weight" for i in range(len(model.lins))}
    if set(state) != expected:
        raise ValueError(f"Unexpected LPIPS linear weights in {path}: keys {sorted(state)}, expected "
                         f"{sorted(expected)}. Reinstall lpips (pip install --force-reinstall lpips).")
    for i, head in enumerate(model.lins):
        head.load_state_dict({"model.1.weight": state[f"lin{i}.model.1.weight"]}, strict=True)


def _load_backbone(model: FrozenLPIPS, net: str, path: Path, *, trust_pickle: bool) -> None:
    """Copy torchvision ``features.<i>.*`` weights into LPIPS's slices (which keep torchvision's indices)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_pickle,
                           mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise ValueError(
            f"Cannot read the LPIPS backbone weights {path}: {type(exc).__name__}: {exc}\nReplace it with the "
            f"original torchvision file ({_weights_enum(net).url}). A file that needs pickle is refused unless "
            f"create_lpips(..., trust_pickle=True) is passed for a file you trust.") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}). Replace it with the "
                         f"original torchvision file ({_weights_enum(net).url}).")
    targets = {}  # "features.<i>" -> LPIPS layer with that torchvision index
    for slice_module in (getattr(model.net, f"slice{k}") for k in range(1, model.net.N_slices + 1)):
        for index, layer in slice_module.named_children():
            if any(True for _ in layer.parameters()):
                targets[f"features.{index}"] = layer
    expected = {f"{name}.{p}" for name, layer in targets.items() for p, _ in layer.named_parameters()}
    trunk = {k for k in state if not k.startswith(_UNUSED_BACKBONE_PREFIX)}
    if trunk != expected:
        raise ValueError(
            f"{path} is not torchvision's {net} checkpoint: missing keys {sorted(expected - trunk)}, unexpected "
            f"keys {sorted(trunk - expected)}. Replace it with the original file ({_weights_enum(net).url}).")
    for name, layer in targets.items():
        layer.load_state_dict({p: state[f"{name}.{p}"] for p, _ in layer.named_parameters()}, strict=True)


def _try_download(net: str, path: Path, timeout: float) -> str:
    """One download attempt into torchvision's cache; returns why it failed ('' on success)."""
    url = _weights_enum(net).url
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(url))
    previous = socket.getdefaulttimeout()
    # torch.hub's downloader opens its connection with no timeout: a default timeout keeps an offline or
    # firewalled machine from hanging (name lookups fail fast on their own).
    socket.setdefaulttimeout(timeout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=False)
        return ""
    except (OSError, RuntimeError) as exc:  # URLError/timeouts are OSErrors; a hash mismatch is a RuntimeError
        return f"downloading {url} failed ({type(exc).__name__}: {exc})"
    finally:
        socket.setdefaulttimeout(previous)


def _missing_message(net: str, path: Path, problem: str | None) -> str:
    url = _weights_enum(net).url
    tried = f"\nA download was tried: {problem}." if problem else ""
    return (
        f"LPIPS ({net}) needs torchvision's ImageNet backbone weights at\n  {path}\nand the file is missing.{tried}\n"
        f"Fixes: copy {os.path.basename(url)} (from {url}, e.g. downloaded on a machine with internet or attached "
        f"as a Kaggle dataset) to that path, or set TORCH_HOME to a folder that has hub/checkpoints/"
        f"{os.path.basename(url)}. For a demo or a test only: allow a random backbone (create_lpips(..., "
        f"allow_random_backbone=True), config vae_loss.allow_random_lpips=true); its values are then not LPIPS.")
