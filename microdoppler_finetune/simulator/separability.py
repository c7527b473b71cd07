"""How identifiable are the simulated people? A linear probe tested on held-out recordings.

Frames of one recording overlap in time, so testing on frames of training recordings would measure
memorisation. The probe trains on some recordings of every person and tests on the others. Features are
deliberately simple and invariant to what varies between recordings of one person: the image is mapped
back from the colormap to [0, 1], flipped so the body's Doppler is positive (walking away mirrors the
image), then summarised by its time-averaged Doppler profile and the spectrum of its limb energy over
time (cadence).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from microdoppler_finetune.simulator.dataset import PARAMETERS_FILE
from microdoppler_finetune.simulator.render import colormap_lut


def load_simulated(folder) -> List[dict]:
    """The parameter records of a flat-layout simulated dataset, in file order."""
    folder = Path(folder)
    records = []
    for person_dir in sorted(folder.glob("ID_*")):
        lines = (person_dir / PARAMETERS_FILE).read_text().splitlines()
        for line in lines:
            record = json.loads(line)
            record["path"] = str(person_dir / record["file"])
            records.append(record)
    if not records:
        raise FileNotFoundError(f"no ID_*/{PARAMETERS_FILE} under {folder}: is it a flat-layout simulator output?")
    return records


@lru_cache(maxsize=4)
def _inverse_colormap(colormap: str = "jet", levels: int = 32) -> np.ndarray:
    """(levels, levels, levels) cube: quantised RGB -> position (0..1) of the nearest colormap colour."""
    lut = colormap_lut(colormap).astype(np.float32)
    centres = (np.arange(levels, dtype=np.float32) + 0.5) * (256.0 / levels)
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    nearest = np.empty(grid.shape[0], dtype=np.int64)
    for start in range(0, grid.shape[0], 4096):  # chunks keep the distance matrix small
        block = grid[start:start + 4096]
        nearest[start:start + 4096] = np.argmin(((block[:, None, :] - lut[None]) ** 2).sum(axis=2), axis=1)
    return (nearest / 255.0).reshape(levels, levels, levels)


def image_to_unit(rgb: np.ndarray, colormap: str = "jet", levels: int = 32) -> np.ndarray:
    """Invert the colormap: each pixel -> position (0..1) of the nearest colormap colour."""
    q = rgb.astype(np.int64) * levels // 256
    return _inverse_colormap(colormap, levels)[q[..., 0], q[..., 1], q[..., 2]]


def image_features(path, size: int = 64, cadence_bins: int = 16) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
    unit = image_to_unit(rgb)
    half = size // 2
    if unit[:half].sum() < unit[half:].sum():  # body below zero Doppler: walking away; mirror it
        unit = unit[::-1]
    profile = unit.mean(axis=1)
    limbs = unit[: half // 2].mean(axis=0)  # fast (limb) Doppler band over time
    limbs = (limbs - limbs.mean()) * np.hanning(size)
    spectrum = np.abs(np.fft.rfft(limbs))[:cadence_bins]
    return np.concatenate([profile, spectrum / (spectrum.sum() + 1e-6)])


def held_out_recording_accuracy(folder, test_recordings: Sequence[int] = (4, 5), C: float = 0.1) -> Dict:
    """Train a logistic regression on every recording index not in ``test_recordings`` and report the
    accuracy on frames of the held-out recordings (and the chance level)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    records = load_simulated(folder)
    x = np.stack([image_features(r["path"]) for r in records])
    y = np.array([r["person_index"] for r in records])
    test = np.array([r["recording_index"] in set(test_recordings) for r in records])
    if test.all() or not test.any():
        raise ValueError(f"test_recordings {list(test_recordings)} leave no training or no test frames")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    probe.fit(x[~test], y[~test])
    accuracy = float(np.mean(probe.predict(x[test]) == y[test]))
    people = len(set(y.tolist()))
    return {"accuracy": accuracy, "chance": 1.0 / people, "people": people, "train_images": int((~test).sum()),
            "test_images": int(test.sum()), "test_recordings": list(test_recordings)}
