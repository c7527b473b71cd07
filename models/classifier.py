"""Person-identification classifier for micro-Doppler spectrograms.

A timm ResNet (random init: no ImageNet weights are needed or downloaded) with a configurable width and depth,
plus a linear head. It has two jobs in the project:

- identify the person in a spectrogram (the "does generated data help?" experiments), and
- provide an offline feature space (``features``: the globally pooled embedding) for FID/KID,
  precision/recall and memorisation metrics, where the Inception network's weights are usually unavailable.

Train/eval mode matters: the backbone uses BatchNorm (and optional dropout before the head). Call ``eval()``
before extracting features or predicting so results do not depend on the batch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import timm
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

CLASSIFIER_PRESETS: dict[str, dict] = {
    # CPU demo and tests (64x64 or smaller): ~0.3 M parameters, one block per stage, a narrow "deep" stem.
    "tiny": dict(channels=(16, 32, 64, 128), layers=(1, 1, 1, 1), stem_type="deep", stem_width=8),
    # A middle size for 128x128 on CPU or small GPUs: ~2.8 M parameters.
    "small": dict(channels=(32, 64, 128, 256), layers=(2, 2, 2, 2), stem_type="deep", stem_width=16),
    # ResNet-18 (11 M parameters) for 256x256 on a GPU.
    "standard": dict(channels=(64, 128, 256, 512), layers=(2, 2, 2, 2), stem_type="", stem_width=64),
}


class SpectrogramClassifier(ModelMixin, ConfigMixin):
    """ResNet backbone -> pooled embedding (``features``) -> linear head (``forward`` gives logits).

    Inputs are spectrogram images [B, in_channels, H, W] in [-1, 1] (the dataset's range); any H, W of at least
    32 works because the backbone ends in global average pooling.
    """

    @register_to_config
    def __init__(self, num_classes: int, in_channels: int = 3, channels: Sequence[int] = (64, 128, 256, 512),
                 layers: Sequence[int] = (2, 2, 2, 2), stem_type: str = "", stem_width: int = 64,
                 drop_rate: float = 0.0, image_size: Optional[int] = None):
        # image_size is informational: the size the classifier was trained at, so feature extraction for
        # metrics can resize to it (the network itself accepts any size of at least 32).
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}.")
        if len(channels) != len(layers):
            raise ValueError(f"channels {tuple(channels)} and layers {tuple(layers)} must have the same length "
                             f"(one entry per ResNet stage).")
        if stem_type == "" and stem_width != 64:
            # timm's plain stem is always 64 wide; a silently ignored width would mislead the saved config.
            raise ValueError("stem_width only applies to stem_type='deep'; the plain ResNet stem is 64 wide.")
        # num_classes=0: timm returns the pooled embedding, the head is ours (so features/forward share it).
        self.backbone = timm.create_model(
            "resnet18", pretrained=False, num_classes=0, in_chans=in_channels, channels=tuple(channels),
            layers=tuple(layers), stem_type=stem_type, stem_width=stem_width)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.num_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, C, H, W] in [-1, 1] -> embedding [B, feature_dim] (after global average pooling)
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"Classifier expects [B, {self.config.in_channels}, H, W] images, got "
                             f"{tuple(images.shape)}.")
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, C, H, W] -> logits [B, num_classes]; dropout only acts in train mode
        return self.head(self.dropout(self.features(images)))


def create_classifier(name_or_config: str | Mapping = "tiny", **overrides) -> SpectrogramClassifier:
    """A classifier from a preset name (see CLASSIFIER_PRESETS) or a config mapping, plus overrides.

    ``num_classes`` (the number of people) has no default: pass it as an override.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in CLASSIFIER_PRESETS:
            raise KeyError(f"Unknown classifier preset '{name_or_config}'. Known: {', '.join(CLASSIFIER_PRESETS)}.")
        config = dict(CLASSIFIER_PRESETS[name_or_config])
    else:
        config = {k: v for k, v in dict(name_or_config).items() if not k.startswith("_")}
    config.update(overrides)
    if "num_classes" not in config:
        raise ValueError("create_classifier needs num_classes (the number of people in the manifest).")
    return SpectrogramClassifier(**config)


def load_classifier(path, *, device: str | torch.device = "cpu") -> SpectrogramClassifier:
    """A classifier saved with ``save_pretrained`` (safetensors + config.json), in eval mode."""
    from pathlib import Path

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved classifier (no config.json). Train one with "
                                f"python microdoppler_finetune/step6_evaluate.py, which saves it under "
                                f"<work_dir>/evaluation/identification/feature_classifier.")
    model = SpectrogramClassifier.from_pretrained(str(folder))
    return model.to(device).eval()  # eval: BatchNorm uses running statistics
