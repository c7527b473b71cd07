"""Spectrogram -> image: dB, clip to a dynamic range below the maximum, resize, colormap, JPEG.

Images follow the usual micro-Doppler convention: time on the x axis (left to right), Doppler on the y
axis with positive Doppler (approaching) at the top and zero Doppler in the middle row.
"""
from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


@lru_cache(maxsize=8)
def colormap_lut(name: str = "jet") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; use a matplotlib name such as 'jet' or 'viridis'") from None
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def power_to_unit(power: np.ndarray, dynamic_range_db: float = 50.0) -> np.ndarray:
    """Power -> dB -> [0, 1], where 1 is the frame's maximum and 0 is ``dynamic_range_db`` below it."""
    db = 10.0 * np.log10(np.maximum(power, 1e-30))
    top = float(db.max())
    return np.clip((db - (top - dynamic_range_db)) / dynamic_range_db, 0.0, 1.0)


def spectrogram_image(power: np.ndarray, image_size: int = 256, dynamic_range_db: float = 50.0,
                      colormap="jet") -> np.ndarray:
    """(Doppler bins x columns) power, most negative Doppler in row 0 -> (S, S, 3) uint8 RGB image.
    ``colormap``: a matplotlib name or a (256, 3) uint8 lookup table."""
    lut = colormap_lut(colormap) if isinstance(colormap, str) else colormap
    unit = power_to_unit(power, dynamic_range_db)[::-1]  # positive Doppler on top
    # Resize the scalar map before colouring: interpolating colours would invent hues.
    resized = Image.fromarray(np.ascontiguousarray(unit, dtype=np.float32), mode="F").resize(
        (image_size, image_size), Image.BILINEAR)
    index = np.clip(np.asarray(resized) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut[index]


def encode_jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
