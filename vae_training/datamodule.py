"""Train/validation data of the VA-VAE stages, read from the one manifest step3 wrote (never re-split here)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from microdoppler_finetune.data import MicroDopplerDataset, load_manifest


class VAEDataModule(pl.LightningDataModule):
    def __init__(self, manifest_path: str | Path, *, image_size: int, batch_size: int, num_workers: int = 0,
                 flip: bool = False):
        super().__init__()
        self.manifest_path = Path(manifest_path)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.flip = bool(flip)
        self.manifest = load_manifest(self.manifest_path)
        self.train_set: Optional[MicroDopplerDataset] = None
        self.val_set: Optional[MicroDopplerDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = MicroDopplerDataset(self.manifest, "train", image_size=self.image_size, flip=self.flip)
        # Validation never flips: its numbers must compare across epochs and runs.
        self.val_set = MicroDopplerDataset(self.manifest, "val", image_size=self.image_size, flip=False)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(f"{self.manifest_path}: the train split has {len(self.train_set)} and the val split "
                             f"{len(self.val_set)} images; both are needed. Re-run step3 with more data or other "
                             f"split fractions into a new --dataset_dir.")

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def fixed_val_images(self, count: int) -> torch.Tensor:
        """The same ``count`` validation images every epoch: one per person in turn, in manifest order."""
        self.setup()
        if count <= 0:
            return torch.empty(0)
        # Person ids from the manifest rows (reading dataset items would decode every image).
        by_person: dict[int, list[int]] = {}
        rows = self.manifest.entries_for("val")
        for index, row in enumerate(rows):
            by_person.setdefault(int(row["person_id"]), []).append(index)
        chosen: list[int] = []
        depth = 0
        while len(chosen) < min(count, len(rows)):
            for person in sorted(by_person):
                if depth < len(by_person[person]) and len(chosen) < count:
                    chosen.append(by_person[person][depth])
            depth += 1
        return torch.stack([self.val_set[i]["image"] for i in chosen])
