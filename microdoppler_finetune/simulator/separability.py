"""How identifiable are the simulated people? A linear probe tested on held-out recordings.

Frames of one recording overlap in time, so testing on frames of training recordings would measure
memorisation. The probe trains on some recordings of every person and tests on the others.
Features: the image downsampled (coarse time-Doppler layout) plus its time-averaged Doppler profile
(independent of where in the gait cycle a frame starts).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from microdoppler_finetune.simulator.dataset import PARAMETERS_FILE


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


def image_features(path, grid: int = 16) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    coarse = np.asarray(image.resize((grid, grid), Image.BILINEAR), dtype=np.float32).ravel() / 255.0
    profile = rgb.mean(axis=1).ravel()  # (rows x 3): time-averaged Doppler profile
    return np.concatenate([coarse, profile])


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
