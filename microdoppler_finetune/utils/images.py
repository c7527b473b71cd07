"""Images as tensors: the project's one convention is float [-1, 1] for models and uint8 0..255 for files."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 levels round((x + 1) * 127.5), as an image file stores them (any shape)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 levels -> floats in [-1, 1] (moved first, then converted: uint8 is 4x cheaper to move)."""
    return images.to(device).float() / 127.5 - 1.0


def hwc_uint8_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """An H x W x 3 uint8 array (a decoded image file) -> a [3, H, W] float tensor in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1))


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] (or [C, H, W]) in [-1, 1] -> uint8 arrays [B, H, W, C] (or [H, W, C]), as files hold them."""
    if images.ndim not in (3, 4) or images.shape[-3] not in (1, 3):
        raise ValueError(f"Expected images shaped [B,3,H,W] or [3,H,W] (or 1 channel), got {tuple(images.shape)}.")
    return to_uint8(images.cpu()).movedim(-3, -1).numpy()


def psnr_uint8(reference, test) -> np.ndarray:
    """Per-image PSNR in dB (float64) of two uint8 batches, batch first (tensors or arrays; identical images
    give inf). Every PSNR of the project goes through here: scikit-image on the uint8 levels a saved image file
    holds, data range 255."""
    from skimage.metrics import peak_signal_noise_ratio

    reference, test = np.asarray(torch.as_tensor(reference).cpu()), np.asarray(torch.as_tensor(test).cpu())
    if reference.shape != test.shape:
        raise ValueError(f"Image batches differ in shape: {reference.shape} vs {test.shape}.")
    if reference.dtype != np.uint8 or test.dtype != np.uint8:
        raise TypeError(f"PSNR is measured on uint8 levels (use to_uint8), got {reference.dtype} and {test.dtype}.")
    with np.errstate(divide="ignore"):  # identical images: mse 0 -> inf, as intended
        return np.array([peak_signal_noise_ratio(r, t, data_range=255) for r, t in zip(reference, test)],
                        dtype=np.float64)


def resize(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """[B, C, H, W] floats resized bilinearly (antialiased when shrinking) to size x size; None: unchanged."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    shrinking = size < max(images.shape[-2:])
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrinking)
