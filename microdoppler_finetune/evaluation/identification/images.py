"""The images an identification experiment trains and tests on, in memory, with their labels.

Images are loaded once per split and kept as uint8 tensors [N, 3, H, W] (a 31-person data set at 256x256 is
about 0.9 GB); batches are converted to [-1, 1] floats on the fly. Generated images are labelled with the
manifest's person and condition ids, matched by folder NAME, and can never be copies of held-out real images.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from microdoppler_finetune.utils.files import file_sha256
from microdoppler_finetune.utils.images import from_uint8, hwc_uint8_to_tensor, to_uint8

FALLBACK_BLOCKS = 10  # frame blocks per (person, condition) that has a single recording in the train split


@dataclass
class LabelledImages:
    """Images in memory with their labels and where each came from.

    ``keys`` identify samples across runs: ``"<split>:<manifest entry index>"`` for real images, the file path
    for generated ones. ``recordings`` group near-duplicate frames (real images only; "" otherwise).
    """

    images: torch.Tensor          # uint8 [N, 3, H, W]
    person_ids: torch.Tensor      # int64 [N]
    condition_ids: torch.Tensor   # int64 [N]; -1 = unknown condition
    keys: List[str]
    recordings: List[str]
    source: str

    def __post_init__(self):
        n = len(self.images)
        if not (len(self.person_ids) == len(self.condition_ids) == len(self.keys) == len(self.recordings) == n):
            raise ValueError(f"LabelledImages '{self.source}': {n} images but {len(self.person_ids)} person ids, "
                             f"{len(self.condition_ids)} condition ids, {len(self.keys)} keys.")
        if self.images.dtype != torch.uint8 or (n and self.images.ndim != 4):
            raise ValueError(f"LabelledImages '{self.source}' expects uint8 [N,3,H,W] images, got "
                             f"{self.images.dtype} {tuple(self.images.shape)}.")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, positions: Sequence[int], source: Optional[str] = None) -> "LabelledImages":
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return LabelledImages(self.images[index], self.person_ids[index], self.condition_ids[index],
                              [self.keys[i] for i in index.tolist()], [self.recordings[i] for i in index.tolist()],
                              source or self.source)

    def float_images(self, positions: Optional[torch.Tensor] = None, device=None) -> torch.Tensor:
        """[B,3,H,W] float in [-1, 1] (the dataset's range) on ``device``; uint8 is moved, then converted."""
        images = self.images if positions is None else self.images[positions]
        return from_uint8(images, device)


def concatenate(parts: Sequence[LabelledImages], source: str) -> LabelledImages:
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError(f"No images to train on for '{source}'.")
    sizes = {tuple(p.images.shape[1:]) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"Image sizes differ between training sources {[p.source for p in parts]}: {sizes}.")
    return LabelledImages(torch.cat([p.images for p in parts]), torch.cat([p.person_ids for p in parts]),
                          torch.cat([p.condition_ids for p in parts]), [k for p in parts for k in p.keys],
                          [r for p in parts for r in p.recordings], source)




def entry_value(entry, name: str, default=None):
    """A manifest entry's field, whether entries are dicts or objects."""
    if isinstance(entry, dict):
        return entry.get(name, default)
    return getattr(entry, name, default)


def _collect(dataset, *, batch_size: int, num_workers: int, description: str):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    images, persons, conditions, indices, paths = [], [], [], [], []
    for batch in loader:
        images.append(to_uint8(batch["image"]))
        persons.append(torch.as_tensor(batch["person_id"]).long())
        conditions.append(torch.as_tensor(batch["condition_id"]).long())
        indices.extend(int(i) for i in batch.get("index", range(len(batch["image"]))))
        paths.extend(str(p) for p in batch.get("path", [""] * len(batch["image"])))
    if not images:
        raise ValueError(f"No images in {description}.")
    return torch.cat(images), torch.cat(persons), torch.cat(conditions), indices, paths


def load_split_images(manifest, split: str, *, image_size: int, batch_size: int = 64,
                      num_workers: int = 0) -> LabelledImages:
    """All images of one manifest split (no flips), with their recordings for fraction selection."""
    from microdoppler_finetune.data import MicroDopplerDataset

    dataset = MicroDopplerDataset(manifest, split, image_size=image_size, flip=False)
    images, persons, conditions, indices, _ = _collect(dataset, batch_size=batch_size, num_workers=num_workers,
                                                       description=f"the '{split}' split of the manifest")
    entries = manifest.entries
    recordings = [_recording_key(entries[i]) for i in indices]
    return LabelledImages(images, persons, conditions, [f"{split}:{i}" for i in indices], recordings,
                          f"real:{split}")


def _recording_key(entry) -> str:
    """The manifest's split unit of an image: its ``group`` (a recording, or a frame block of one), else its
    recording; "" when the file names carry neither. Only unique within a person and condition, hence the prefix."""
    unit = entry_value(entry, "group", "") or entry_value(entry, "recording", "") or ""
    return f"{entry_value(entry, 'person_id')}/{entry_value(entry, 'condition_id', 0)}/{unit}"


def map_person_names(names: Iterable[str], manifest_names: Sequence[str], *, folder) -> Dict[str, int]:
    """Manifest person id of each generated person folder, matched by NAME (never by position).

    An exact name match wins; otherwise the person number decides, so ID_7, ID7 and 07 are the same person.
    """
    from microdoppler_finetune.data.layouts import person_number

    exact = {str(name): i for i, name in enumerate(manifest_names)}
    by_number = {}
    for i, name in enumerate(manifest_names):
        number = person_number(str(name))
        if number is not None:
            by_number[number] = i
    mapping, unknown = {}, []
    for name in names:
        if name in exact:
            mapping[name] = exact[name]
        elif person_number(name) is not None and person_number(name) in by_number:
            mapping[name] = by_number[person_number(name)]
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{folder}: person folders {', '.join(sorted(unknown))} are not people of the manifest "
                         f"({', '.join(map(str, manifest_names))}). Generated folders must be named like the "
                         f"real ones (ID_n).")
    return mapping


def map_condition_names(names: Iterable[str], manifest_conditions: Sequence[str], *, folder) -> Dict[str, int]:
    """Manifest condition id of each generated condition folder (case-insensitive); -1 when unknowable.

    A generated folder without condition folders gets the manifest's only condition if it has one, else -1
    (unknown: such images are used as training data but never as a specific condition).
    """
    from microdoppler_finetune.data.layouts import DEFAULT_CONDITION

    lowered = {str(c).lower(): i for i, c in enumerate(manifest_conditions)}
    mapping, unknown = {}, []
    for name in names:
        if name.lower() in lowered:
            mapping[name] = lowered[name.lower()]
        elif name == DEFAULT_CONDITION:
            mapping[name] = 0 if len(manifest_conditions) == 1 else -1
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{folder}: condition folders {', '.join(sorted(unknown))} are not conditions of the "
                         f"manifest ({', '.join(map(str, manifest_conditions))}).")
    return mapping


def load_generated_images(generated_dir, manifest, *, image_size: int, max_per_person: Optional[int] = None,
                          seed: int = 0, num_workers: int = 0) -> LabelledImages:
    """A folder of generated images in the dataset layout (ID_n/*.jpg or <Condition>/ID_n/*.jpg), as training
    data labelled with the MANIFEST's person and condition ids (matched by folder name)."""
    from microdoppler_finetune.data.layouts import scan_dataset

    folder = Path(generated_dir)
    scan = scan_dataset(folder)
    if not scan.images:
        raise ValueError(f"{folder} holds no images. Pass the folder the sampling step wrote (ID_n/*.jpg).")
    persons = map_person_names(scan.persons, manifest.person_names, folder=folder)
    conditions = map_condition_names(scan.conditions, manifest.condition_names, folder=folder)
    images = list(scan.images)
    if max_per_person is not None:
        rng = random.Random(seed)
        by_person: Dict[str, list] = {}
        for image in images:
            by_person.setdefault(image.person, []).append(image)
        images = []
        for person in sorted(by_person):
            group = by_person[person]
            images.extend(group if len(group) <= max_per_person else rng.sample(group, max_per_person))
    _refuse_held_out_copies(folder, images, manifest)
    dataset = _ImageFiles([str(i.path) for i in images], [persons[i.person] for i in images],
                          [conditions[i.condition] for i in images], image_size)
    pixels, person_ids, condition_ids, _, paths = _collect(dataset, batch_size=64, num_workers=num_workers,
                                                           description=str(folder))
    return LabelledImages(pixels, person_ids, condition_ids, paths, [""] * len(paths), "generated")


def _refuse_held_out_copies(folder: Path, images: Sequence, manifest) -> None:
    """A generated folder must not smuggle real validation/test images into training: byte-identical files
    (the manifest stores every image's sha256) stop the run."""
    held_out = {e["sha256"]: e["path"] for e in manifest.entries_for(["val", "test"]) if e.get("sha256")}
    if not held_out:
        return
    copies = []
    for image in images:
        digest = file_sha256(image.path)
        if digest in held_out:
            copies.append(f"{image.rel_path} = {held_out[digest]}")
    if copies:
        raise ValueError(f"{folder} holds {len(copies)} files identical to real validation/test images (e.g. "
                         f"{'; '.join(copies[:3])}). Training on them would leak the held-out splits: pass a folder "
                         f"with generated images only.")


class _ImageFiles(torch.utils.data.Dataset):
    """Image files with given labels, preprocessed exactly like the real data (the data package's loader)."""

    def __init__(self, paths: List[str], person_ids: List[int], condition_ids: List[int], image_size: int):
        self.paths, self.person_ids, self.condition_ids, self.image_size = paths, person_ids, condition_ids, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from microdoppler_finetune.data.images import load_rgb

        image = hwc_uint8_to_tensor(load_rgb(Path(self.paths[i]), self.image_size))  # [3, H, W], like the real data
        return {"image": image, "person_id": self.person_ids[i], "condition_id": self.condition_ids[i],
                "index": i, "path": self.paths[i]}


# ------------------------------------------------------------------------------------------- data selection

def select_fraction_by_recording(data: LabelledImages, fraction: float, seed: int = 0) -> List[int]:
    """Positions of the images of a seeded ``fraction`` of whole recordings, per person and condition.

    Each (person, condition) keeps round(fraction x its recordings) recordings, at least one, so every person
    stays present. The order is a seeded shuffle of the sorted recording names and a smaller fraction takes a
    prefix of it, so the 10 % subset is inside the 25 % subset (a curve over fractions adds data, it does not
    swap it). A (person, condition) with a single recording is cut into FALLBACK_BLOCKS contiguous frame blocks.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"real_fraction must be in (0, 1], got {fraction}.")
    groups: Dict[tuple, Dict[str, List[int]]] = {}
    for position, (person, condition, recording) in enumerate(
            zip(data.person_ids.tolist(), data.condition_ids.tolist(), data.recordings)):
        groups.setdefault((person, condition), {}).setdefault(recording, []).append(position)
    for group_key, recordings in groups.items():
        if len(recordings) == 1:
            # One recording (or names without any) for this person and condition: contiguous frame blocks
            # (in manifest order, i.e. frame order) stand in for recordings so a fraction can still be taken.
            (name, positions), = recordings.items()
            blocks = np.array_split(np.asarray(positions), min(FALLBACK_BLOCKS, len(positions)))
            groups[group_key] = {f"{name}#block{b:02d}": block.tolist() for b, block in enumerate(blocks)}
    chosen: List[int] = []
    for group_key in sorted(groups):
        recordings = sorted(groups[group_key])
        random.Random(f"{seed}:{group_key[0]}:{group_key[1]}").shuffle(recordings)
        keep = max(1, int(math.floor(fraction * len(recordings) + 0.5)))
        for recording in recordings[:keep]:
            chosen.extend(groups[group_key][recording])
    return sorted(chosen)


def positions_with_condition(data: LabelledImages, condition_names: Sequence[str], condition: str) -> List[int]:
    """Positions of the images of one condition (by name)."""
    wanted = list(condition_names).index(condition) if condition in condition_names else None
    return [p for p, c in enumerate(data.condition_ids.tolist()) if c == wanted]