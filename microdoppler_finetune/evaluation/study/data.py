"""The images the study trains and tests on, loaded once: the manifest's splits and the withheld pairs in them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from microdoppler_finetune.evaluation.identification.images import (
    LabelledImages,
    load_generated_images,
    load_split_images,
)


@dataclass
class StudyData:
    manifest: object
    splits: Dict[str, LabelledImages]  # train / val / test
    image_size: int

    @property
    def person_names(self) -> List[str]:
        return list(self.manifest.person_names)

    @property
    def condition_names(self) -> List[str]:
        return list(self.manifest.condition_names)

    @property
    def withholding(self):
        return self.manifest.withholding

    def entry(self, key: str) -> dict:
        """The manifest row of a real image's key ``"<split>:<row>"``."""
        return self.manifest.entries[int(key.split(":", 1)[1])]

    def positions(self, split: str, *, conditions: Optional[Sequence[str]] = None, withheld: Optional[str] = None,
                  persons: Optional[Sequence[str]] = None) -> List[int]:
        """Positions in one split: of some conditions, of withheld pairs ("test"/"val"; "" = not withheld), of
        some people. None: no restriction."""
        data = self.splits[split]
        keep = []
        for position, key in enumerate(data.keys):
            row = self.entry(key)
            if conditions is not None and row["condition"] not in conditions:
                continue
            if withheld is not None and row.get("withheld", "") != withheld:
                continue
            if persons is not None and row["person"] not in persons:
                continue
            keep.append(position)
        return keep

    def subset(self, split: str, **restrictions) -> LabelledImages:
        return self.splits[split].subset(self.positions(split, **restrictions), source=f"real:{split}")

    def unseen_pairs(self) -> List[Tuple[int, int]]:
        """(person id, condition id) pairs with no training image: the withheld ones (val and test)."""
        seen = {(int(p), int(c)) for p, c in zip(self.splits["train"].person_ids.tolist(),
                                                 self.splits["train"].condition_ids.tolist())}
        every = {(int(p), int(c)) for split in ("val", "test")
                 for p, c in zip(self.splits[split].person_ids.tolist(), self.splits[split].condition_ids.tolist())}
        return sorted(every - seen)


def load_study_data(dataset_dir: Path, image_size: int, *, data_root: Optional[str] = None) -> StudyData:
    from microdoppler_finetune.data import load_manifest

    manifest = load_manifest(dataset_dir, data_root=data_root) if data_root else load_manifest(dataset_dir)
    splits = {s: load_split_images(manifest, s, image_size=image_size) for s in ("train", "val", "test")}
    return StudyData(manifest, splits, image_size)


def load_pool(folder: Path, data: StudyData) -> LabelledImages:
    """Generated images of one folder (the dataset layout), labelled with the manifest's ids, in the order they were
    generated (image k of a pair has the same starting noise in a pool of any size, so smaller amounts taken from
    the front are the same images whatever the pool's size)."""
    pool = load_generated_images(folder, data.manifest, image_size=data.image_size)
    order = sorted(range(len(pool)), key=lambda i: (int(pool.person_ids[i]), int(pool.condition_ids[i]),
                                                    _sample_number(pool.keys[i])))
    return pool.subset(order, source=pool.source)


def _sample_number(path: str) -> int:
    match = re.search(r"_Doppler(\d+)\.\w+$", str(path))
    return int(match.group(1)) if match else 0


def take_per_pair(pool: LabelledImages, per_pair: int, keep: Optional[torch.Tensor] = None) -> LabelledImages:
    """The first ``per_pair`` images of each (person, condition) in pool order (so a smaller amount is a subset of
    a larger one), among those with ``keep`` True (a quality filter)."""
    taken: Dict[Tuple[int, int], int] = {}
    chosen = []
    for position, (p, c) in enumerate(zip(pool.person_ids.tolist(), pool.condition_ids.tolist())):
        if keep is not None and not bool(keep[position]):
            continue
        if taken.get((p, c), 0) < per_pair:
            taken[(p, c)] = taken.get((p, c), 0) + 1
            chosen.append(position)
    return pool.subset(chosen, source=pool.source)
