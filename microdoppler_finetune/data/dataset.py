"""PyTorch view of one or more splits of the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from microdoppler_finetune.utils.images import hwc_uint8_to_tensor

from .images import load_rgb
from .manifest import Manifest, load_manifest


class MicroDopplerDataset(Dataset):
    """Items ``{"image": FloatTensor[3, H, W] in [-1, 1], "person_id", "condition_id", "index", "path",
    "flipped"}``; ``index`` is the manifest row, ``path`` the manifest's relative path (a stable cache key).

    ``split``: "train", "val", "test", "gap", "all" (train+val+test) or a list of them.
    ``flip``: random horizontal flip with p=0.5. Off by default: the horizontal axis of a spectrogram is time,
    so a flipped image is a time-reversed walk, not a real sample. Turn it on only on purpose (training).
    """

    def __init__(self, manifest: Union[Manifest, str, Path], split: Union[str, Sequence[str]] = "train",
                 image_size: int = 256, flip: bool = False, data_root: Optional[Union[str, Path]] = None):
        if not isinstance(manifest, Manifest):
            manifest = load_manifest(manifest, data_root=data_root)
        elif data_root is not None:
            manifest = Manifest(path=manifest.path, data_root=Path(data_root), entries=manifest.entries,
                                person_names=manifest.person_names, condition_names=manifest.condition_names,
                                labels=manifest.labels)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.manifest = manifest
        self.split = split
        self.image_size = int(image_size)
        self.flip = bool(flip)
        # Only what __getitem__ needs, as small dicts of primitives (pickled into each DataLoader worker).
        self.rows = [{k: e[k] for k in ("path", "person_id", "condition_id", "index")}
                     for e in manifest.entries_for(split)]
        self.data_root = Path(manifest.data_root)
        if self.rows and not self.data_root.is_dir():
            raise FileNotFoundError(
                f"The images of {manifest.path} are expected under {self.data_root}, which is not a folder. If the "
                f"dataset moved (e.g. attached at another Kaggle path), pass data_root=/its/new/path (--data_root).")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def person_ids(self) -> list:
        return [r["person_id"] for r in self.rows]

    @property
    def condition_ids(self) -> list:
        return [r["condition_id"] for r in self.rows]

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        path = self.data_root / row["path"]
        try:
            img = load_rgb(path, self.image_size)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path} (row {row['index']} of {self.manifest.path}) is missing. The data "
                                    f"folder changed after step3: re-run step3 with --overwrite, or pass the "
                                    f"right data_root.") from exc
        image = hwc_uint8_to_tensor(np.asarray(img, dtype=np.uint8))  # 3 x H x W in [-1, 1]
        flipped = False
        # torch's RNG (not numpy's): DataLoader seeds it per worker, so flips differ across workers.
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)  # horizontal = time axis
            flipped = True
        return {"image": image, "person_id": row["person_id"], "condition_id": row["condition_id"],
                "index": row["index"], "path": row["path"], "flipped": flipped}


def evenly_spaced_subset(dataset: Dataset, max_items: Optional[int]) -> Dataset:
    """At most ``max_items`` items spread over the whole dataset (manifest order groups people together,
    so the first N would cover only the first people)."""
    total = len(dataset)
    if max_items is None or max_items <= 0 or max_items >= total:
        return dataset
    positions = np.unique(np.linspace(0, total - 1, num=max_items).round().astype(int))
    return Subset(dataset, positions.tolist())
