"""PatchGAN discriminator for the VA-VAE's adversarial loss.

The layer order follows the pix2pix PatchGAN that the released VA-VAE training used (``loss.discriminator.main.*``
in the released checkpoint), so a discriminator saved by the official code loads into this class unchanged:
see :func:`extract_discriminator_state`.

Train/eval mode matters here: the network uses BatchNorm. In train mode every forward pass normalises with the
batch's own statistics and updates the running averages (that is what the released recipe does for both the
generator and the discriminator passes); in eval mode the running averages are used.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from models.checkpoints import KeyMismatchError, KeyReport, report_key_mismatch

DISCRIMINATOR_PRESETS: dict[str, dict] = {
    # The released recipe: 3 strided layers, 64 base channels, BatchNorm.
    "patchgan": dict(in_channels=3, ndf=64, num_layers=3),
    # For CPU tests and the demo profile.
    "tiny": dict(in_channels=3, ndf=8, num_layers=2),
}

# Key prefix of the discriminator inside the released VA-VAE training checkpoint ("state_dict" entry).
RELEASED_DISCRIMINATOR_PREFIX = "loss.discriminator."


def _init_weights(module: nn.Module) -> None:
    """DCGAN-style init: conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(ModelMixin, ConfigMixin):
    """Fully convolutional PatchGAN: one real/fake logit per overlapping image patch.

    ``num_layers`` stride-2 convolutions (the first without normalisation), then one stride-1 conv with
    BatchNorm and a stride-1 conv to a single channel. Channels double per layer, capped at 8·ndf.
    A 256×256 image gives 30×30 logits and a 64×64 image 6×6 (3 layers).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, ndf: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}.")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = ndf
        for n in range(1, num_layers + 1):
            out_channels = ndf * min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last feature layer keeps the resolution
            # No conv bias before BatchNorm: the norm's shift makes it redundant.
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, in_channels, H, W] in [-1, 1] -> logits [B, 1, h, w] (one per patch)
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"Discriminator expects [B, {self.config.in_channels}, H, W] images, got "
                             f"{tuple(images.shape)}.")
        return self.main(images)


def create_discriminator(name_or_config: str | Mapping = "patchgan", **overrides) -> NLayerDiscriminator:
    """A discriminator from a preset name (see DISCRIMINATOR_PRESETS) or a config mapping, plus overrides."""
    if isinstance(name_or_config, str):
        if name_or_config not in DISCRIMINATOR_PRESETS:
            raise KeyError(f"Unknown discriminator preset '{name_or_config}'. Known: "
                           f"{', '.join(DISCRIMINATOR_PRESETS)}.")
        config = dict(DISCRIMINATOR_PRESETS[name_or_config])
    else:
        config = dict(name_or_config)
    config.update(overrides)
    return NLayerDiscriminator(**config)


def extract_discriminator_state(state_dict: Mapping[str, torch.Tensor],
                                prefix: str = RELEASED_DISCRIMINATOR_PREFIX) -> dict[str, torch.Tensor]:
    """The discriminator's weights inside a larger state dict, with ``prefix`` removed.

    The default prefix finds the discriminator in the released VA-VAE training checkpoint; our Lightning
    checkpoints use ``"discriminator."``. Raises KeyError when there is none, so a caller never mistakes
    "absent" for "loaded".
    """
    sub = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not sub:
        raise KeyError(f"No discriminator weights (keys starting with '{prefix}') in this state dict.")
    return sub


def infer_discriminator_config(state: Mapping[str, torch.Tensor]) -> dict:
    """NLayerDiscriminator arguments read off the shapes of its weights (keys without prefix, ``main.*``).

    The convolutions are ``main.<i>.weight`` with 4 dimensions: the first gives ``ndf`` and ``in_channels``, and
    there are ``num_layers + 2`` of them. Raises KeyError when the weights are not a PatchGAN of this layout.
    """
    convs = sorted((int(key.split(".")[1]), value) for key, value in state.items()
                   if key.startswith("main.") and key.endswith(".weight") and key.count(".") == 2
                   and getattr(value, "ndim", 0) == 4)
    if len(convs) < 3:
        raise KeyError(f"Not a PatchGAN discriminator: {len(convs)} convolution weights (main.<i>.weight) among "
                       f"keys {sorted(state)[:8]}{' ...' if len(state) > 8 else ''}; at least 3 are needed.")
    first = convs[0][1]
    return dict(in_channels=int(first.shape[1]), ndf=int(first.shape[0]), num_layers=len(convs) - 2)


def load_discriminator_state(discriminator: NLayerDiscriminator, state: Mapping[str, torch.Tensor], *,
                             source: str = "discriminator weights",
                             ignored: Mapping[str, list] | None = None) -> KeyReport:
    """Strict load that names every missing/unexpected key or wrong shape (e.g. another layer count or ndf).

    Returns the :class:`KeyReport` (loaded, ignored on purpose, missing, unexpected); raises
    :class:`KeyMismatchError` (a ValueError) when the weights do not fit.
    """
    own = discriminator.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                         for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        config = {k: v for k, v in discriminator.config.items() if not k.startswith("_")}
        try:
            found = f" (the file holds {infer_discriminator_config(state)})"
        except KeyError:
            found = ""
        raise KeyMismatchError(
            f"{source}: discriminator weights do not fit {config}{found}: missing keys {missing}, unexpected keys "
            f"{unexpected}, wrong shapes {wrong_shape}. Match num_layers/ndf (vae_loss.disc_num_layers / "
            f"vae_loss.disc_channels) to the checkpoint that wrote them.")
    discriminator.load_state_dict(dict(state), strict=True)
    return report_key_mismatch([], [], source=source, loaded=len(state), ignored=ignored)
