"""A labelled preview grid of simulated spectrograms: one row per person, one column per walking condition."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image


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
