"""Turning any image the validator accepts into the 8-bit RGB square the models see."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

# Modes whose samples are wider than 8 bits: PIL's own conversion to RGB clips them instead of scaling.
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: alpha dropped, grayscale copied into three channels, CMYK/palette/16-bit converted."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_GRAY_MODES:
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency must be expanded before it can be dropped
    if img.mode in ("LA", "La"):
        img = img.convert("L")
    return img.convert("RGB")


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """``size`` x ``size``; PIL's bicubic filter widens with the scale factor, i.e. it antialiases when shrinking."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), resample=Image.Resampling.BICUBIC)


def load_rgb(path: Path, size: Optional[int] = None) -> Image.Image:
    """The image at ``path`` as RGB, resized to ``size`` x ``size`` when given."""
    with Image.open(path) as img:
        img.load()
        rgb = to_rgb(img)
    return resize_square(rgb, size) if size else rgb
