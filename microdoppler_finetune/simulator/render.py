"""Spectrogram -> image: dB, clip to a dynamic range below the maximum, resize, colormap, JPEG.

Images follow the usual micro-Doppler convention: time on the x axis (left to right), Doppler on the y
axis with positive Doppler (approaching) at the top and zero Doppler in the middle row.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

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


def render_preview_grid(path, *, people: Sequence[int] = (1, 2, 3),
                        conditions: Optional[Sequence[str]] = None, seed: int = 0, image_size: int = 256,
                        settings=None, colormap: str = "jet", dpi: int = 90) -> Path:
    """A labelled PNG grid: one row per person, one column per condition, the first frame of each
    person's first recording in that condition, with time / Doppler axes in physical units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from microdoppler_finetune.simulator.dataset import simulate_recording_frames
    from microdoppler_finetune.simulator.people import CONDITION_NAMES
    from microdoppler_finetune.simulator.radar import RadarSettings

    conditions = list(conditions or CONDITION_NAMES)
    settings = settings or RadarSettings()
    people = list(people)
    fig, axes = plt.subplots(len(people), len(conditions), figsize=(2.3 * len(conditions), 2.5 * len(people)),
                             squeeze=False)
    half = settings.prf_hz / 2
    for row, person_index in enumerate(people):
        for col, condition in enumerate(conditions):
            frames = simulate_recording_frames(seed, person_index, condition, 0, 1, settings, image_size, colormap)
            image, record = frames[0]
            ax = axes[row][col]
            ax.imshow(image, extent=(0, settings.frame_duration_s, -half, half), aspect="auto")
            ax.set_title(f"ID_{person_index} {condition}\n{record['direction']}, "
                         f"{record['speed_mps']:.2f} m/s", fontsize=7)
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_ylabel("Doppler (Hz)", fontsize=7)
            if row == len(people) - 1:
                ax.set_xlabel("time (s)", fontsize=7)
    fig.suptitle(f"Simulated micro-Doppler spectrograms (seed {seed}, {settings.carrier_hz / 1e9:g} GHz, "
                 f"PRF {settings.prf_hz:g} Hz, {settings.dynamic_range_db:g} dB range)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    # A 256-colour palette loses nothing visible (the cells use one colormap) and makes the file ~3x smaller.
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)
    return path
