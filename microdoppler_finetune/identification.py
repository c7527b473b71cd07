"""Person identification: train and evaluate the classifier, and run the "does generated data help?" experiments.

Protocol (DESIGN.md section 6):

- Every variant is tested on the SAME clean test split of the manifest; nothing trains or selects on it. The
  epoch that is kept (early stopping) is chosen on the validation split only.
- Variants: real only, real + generated, real + conventional augmentation, each over a fraction of the real
  training recordings (10/25/50/100 %; whole recordings are kept or dropped, because frames of one recording
  overlap in time and are near-duplicates), and, when the manifest has walking conditions, a cross-condition
  test: train on Normal* recordings, test on Backpack* test images, with and without generated Backpack samples.
- Each result row records the command that reproduces it.

Images are loaded once per split and kept in memory as uint8 tensors [N, 3, H, W] (a 31-person data set at
256x256 is about 0.9 GB); batches are converted to [-1, 1] floats on the fly.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from models.classifier import SpectrogramClassifier, create_classifier

METHODS = ("real", "real+generated", "real+augmentation")
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
SOURCE_CONDITION_PREFIX = "normal"    # cross-condition experiment: train on these conditions ...
TARGET_CONDITION_PREFIX = "backpack"  # ... and test on these
FALLBACK_BLOCKS = 10  # frame blocks per (person, condition) that has a single recording in the train split


# ------------------------------------------------------------------------------------------- configuration


@dataclass
class IdentificationConfig:
    """Training settings shared by every variant of one experiment (so rows differ only in their data)."""

    preset: str = "tiny"          # models.classifier.CLASSIFIER_PRESETS
    image_size: int = 64
    epochs: int = 30              # upper bound; the best validation epoch is kept
    patience: int = 8             # stop after this many epochs without a better validation accuracy
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0          # image loading workers (loading happens once per split)
    # Conventional augmentation (the baseline). No flips: a flipped spectrogram is time-reversed / mirrored
    # in Doppler, which a walking person never produces.
    max_time_shift: float = 0.25      # circular roll along time (width), as a fraction of the width
    max_doppler_shift: float = 0.04   # shift along Doppler (height), edge rows repeated, fraction of height
    intensity_jitter: float = 0.1     # contrast x U(1 +- j), brightness + U(+- j) in [-1, 1] units


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------- labelled images


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
        return images.to(device).float() / 127.5 - 1.0


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


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 levels, rounded as an image file would store them."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


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
        digest = hashlib.sha256(Path(image.path).read_bytes()).hexdigest()
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

        pixels = torch.from_numpy(np.asarray(load_rgb(Path(self.paths[i]), self.image_size), dtype=np.uint8).copy())
        image = pixels.permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W] in [-1, 1], like the real data
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


def positions_with_condition_prefix(data: LabelledImages, condition_names: Sequence[str], prefix: str) -> List[int]:
    wanted = {i for i, name in enumerate(condition_names) if str(name).lower().startswith(prefix.lower())}
    return [p for p, c in enumerate(data.condition_ids.tolist()) if c in wanted]


# ------------------------------------------------------------------------------------------- augmentation


def conventional_augment(images: torch.Tensor, config: IdentificationConfig,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Baseline augmentation of a [B,3,H,W] batch in [-1, 1]: time roll, small Doppler shift, intensity jitter."""
    b, _, h, w = images.shape
    device = images.device

    def uniform(low, high, size):
        return torch.rand(size, generator=generator).to(device) * (high - low) + low

    # Time (width): circular roll; a walking gait is periodic, so a rolled window is still a plausible one.
    time_shift = uniform(-config.max_time_shift, config.max_time_shift, b).mul(w).round().long()
    cols = (torch.arange(w, device=device)[None, :] - time_shift[:, None]) % w                # [B, W]
    images = images.gather(3, cols[:, None, None, :].expand(b, 3, h, w))
    # Doppler (height): small shift with the edge row repeated (no wrap-around of the velocity axis).
    doppler_shift = uniform(-config.max_doppler_shift, config.max_doppler_shift, b).mul(h).round().long()
    rows = (torch.arange(h, device=device)[None, :] - doppler_shift[:, None]).clamp(0, h - 1)  # [B, H]
    images = images.gather(2, rows[:, None, :, None].expand(b, 3, h, w))
    # Intensity: contrast and brightness jitter, kept in range.
    contrast = uniform(1 - config.intensity_jitter, 1 + config.intensity_jitter, b).view(b, 1, 1, 1)
    brightness = uniform(-config.intensity_jitter, config.intensity_jitter, b).view(b, 1, 1, 1)
    return (images * contrast + brightness).clamp(-1, 1)


# ------------------------------------------------------------------------------------------- training


@torch.no_grad()
def predict_logits(model: SpectrogramClassifier, data: LabelledImages, *, batch_size: int = 128,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    model.eval()  # eval: BatchNorm running statistics, no dropout
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.float_images(torch.arange(start, min(start + batch_size, len(data))), device)
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.config.num_classes)


def _accuracy_and_loss(model, data: LabelledImages, batch_size: int, device) -> tuple[float, float]:
    logits = predict_logits(model, data, batch_size=batch_size, device=device)
    loss = F.cross_entropy(logits, data.person_ids).item()
    accuracy = (logits.argmax(1) == data.person_ids).float().mean().item()
    return accuracy, loss


def train_classifier(train_sources: Sequence[LabelledImages], val_split: LabelledImages, *, num_classes: int,
                     config: Optional[IdentificationConfig] = None, augment: bool = False,
                     forbidden_keys: Iterable[str] = (), log=print) -> tuple[SpectrogramClassifier, dict]:
    """Train a person classifier on the concatenated ``train_sources``; keep the best epoch on ``val_split``.

    ``forbidden_keys`` (e.g. the test split's keys) must not appear in the training data: the run stops with an
    error if they do, so a test image can never be trained on by accident. Returns the model (best validation
    epoch, eval mode) and a history dict with per-epoch losses/accuracies and the keys trained on.
    """
    config = config or IdentificationConfig()
    train = concatenate(train_sources, "+".join(s.source for s in train_sources))
    leaked = set(train.keys) & set(forbidden_keys)
    if leaked:
        raise RuntimeError(f"{len(leaked)} held-out images are in the training data (e.g. {sorted(leaked)[:3]}).")
    if len(val_split) == 0:
        raise ValueError("The validation split is empty: model selection needs validation images.")
    if int(train.person_ids.max()) >= num_classes or int(train.person_ids.min()) < 0:
        raise ValueError(f"Person ids must be in [0, {num_classes}); got {int(train.person_ids.min())}.."
                         f"{int(train.person_ids.max())}.")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = create_classifier(config.preset, num_classes=num_classes,
                              image_size=int(train.images.shape[-1])).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    shuffler = torch.Generator().manual_seed(config.seed)
    augmenter = torch.Generator().manual_seed(config.seed + 1)
    history = {"epochs": [], "best_epoch": None, "best_val_accuracy": None, "train_images": len(train),
               "train_keys": list(train.keys), "augment": augment}
    best_state, best_score, stale = None, None, 0
    for epoch in range(1, config.epochs + 1):
        start = time.time()
        model.train()  # train: BatchNorm batch statistics
        order = torch.randperm(len(train), generator=shuffler)
        total_loss, seen = 0.0, 0
        for begin in range(0, len(order), config.batch_size):
            positions = order[begin:begin + config.batch_size]
            if len(positions) < 2:
                continue  # BatchNorm cannot train on a batch of one
            images = train.float_images(positions, device)
            if augment:
                images = conventional_augment(images, config, augmenter)
            labels = train.person_ids[positions].to(device)
            loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(positions)
            seen += len(positions)
        scheduler.step()
        val_accuracy, val_loss = _accuracy_and_loss(model, val_split, config.batch_size * 2, device)
        record = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_accuracy": val_accuracy,
                  "val_loss": val_loss, "seconds": time.time() - start}
        history["epochs"].append(record)
        score = (val_accuracy, -val_loss)  # accuracy first, validation loss breaks ties
        if best_score is None or score > best_score:
            best_score, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
            history["best_epoch"], history["best_val_accuracy"] = epoch, val_accuracy
        else:
            stale += 1
        if log:
            log(f"  epoch {epoch:3d}: train loss {record['train_loss']:.4f}, val acc {val_accuracy:.4f}, "
                f"val loss {val_loss:.4f} ({record['seconds']:.1f} s)")
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    return model.eval(), history


# ------------------------------------------------------------------------------------------- evaluation


def accuracy_report(predicted: torch.Tensor, data: LabelledImages, person_names: Sequence[str],
                    condition_names: Sequence[str]) -> dict:
    """Accuracy overall, per person and per condition, plus the confusion matrix (rows: true person)."""
    truth = data.person_ids
    correct = (predicted == truth)
    n = len(person_names)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)

    def grouped(labels: torch.Tensor, names: Sequence[str]) -> dict:
        result = {}
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            name = names[label] if 0 <= label < len(names) else f"unknown({label})"
            result[str(name)] = {"accuracy": correct[mask].float().mean().item(), "images": int(mask.sum())}
        return result

    return {"accuracy": correct.float().mean().item() if len(truth) else float("nan"), "images": len(truth),
            "per_person": grouped(truth, person_names), "per_condition": grouped(data.condition_ids, condition_names),
            "confusion_matrix": confusion.tolist()}


def evaluate_classifier(model: SpectrogramClassifier, manifest, split: str = "test", *,
                        images: Optional[LabelledImages] = None, image_size: Optional[int] = None,
                        batch_size: int = 128) -> dict:
    """Identification accuracy of ``model`` on a manifest split (or on already loaded ``images`` of it).

    Images are loaded at ``image_size``, by default the size the classifier was trained at.
    """
    if images is None:
        image_size = image_size or model.config.image_size
        if image_size is None:
            raise ValueError("evaluate_classifier needs image_size: this classifier's config does not record the "
                             "size it was trained at.")
        images = load_split_images(manifest, split, image_size=image_size)
    logits = predict_logits(model, images, batch_size=batch_size)
    return accuracy_report(logits.argmax(1), images, manifest.person_names, manifest.condition_names)


# ------------------------------------------------------------------------------------------- experiments


RESULTS_JSON = "identification_results.json"
RESULTS_MD = "identification_results.md"
INDICES_JSON = "identification_train_keys.json"
FEATURE_CLASSIFIER_DIR = "feature_classifier"


@dataclass
class Variant:
    name: str
    method: str                   # one of METHODS
    real_fraction: float
    cross_condition: bool = False  # train on Normal*, target test = Backpack*


def plan_variants(methods: Sequence[str], fractions: Sequence[float], *, has_generated: bool,
                  has_cross_condition: bool, has_generated_target: bool) -> tuple[List[Variant], List[str]]:
    """The rows to run, and notes on the rows that cannot run with this data."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    variants, notes = [], []
    for method in methods:
        if method == "real+generated" and not has_generated:
            notes.append("real+generated rows skipped: no generated folder given (--generated).")
            continue
        for fraction in sorted(set(fractions)):
            variants.append(Variant(f"{method}@{fraction * 100:g}%", method, fraction))
    if has_cross_condition:
        variants.append(Variant(f"cross-condition:{SOURCE_CONDITION_PREFIX}->{TARGET_CONDITION_PREFIX}", "real",
                                1.0, True))
        if has_generated_target:
            variants.append(Variant(f"cross-condition:{SOURCE_CONDITION_PREFIX}+generated-"
                                    f"{TARGET_CONDITION_PREFIX}->{TARGET_CONDITION_PREFIX}",
                                    "real+generated", 1.0, True))
        elif has_generated:
            notes.append(f"cross-condition with generated data skipped: the generated folder has no "
                         f"{TARGET_CONDITION_PREFIX.capitalize()}* condition folders.")
    else:
        notes.append(f"cross-condition rows skipped: the manifest has no {SOURCE_CONDITION_PREFIX.capitalize()}* "
                     f"and {TARGET_CONDITION_PREFIX.capitalize()}* conditions.")
    return variants, notes


def _keys_fingerprint(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def current_command(module: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> str:
    """A shell-quoted command line that reruns this: ``python -m <module> <argv>`` when the module is known,
    else this process's own command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if module:
        program = f"python -m {module}"
    else:
        program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
        program = f"python {program}" if program.endswith(".py") else program
    return " ".join([program] + [shlex.quote(str(a)) for a in args])


def run_identification_experiments(manifest_dir, generated_dir=None, out_dir="identification",
                                   fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                                   config: Optional[IdentificationConfig] = None, methods: Sequence[str] = METHODS,
                                   cross_condition: bool = True, variants: Optional[Sequence[str]] = None,
                                   command: Optional[str] = None, data_root=None,
                                   max_generated_per_person: Optional[int] = None, log=print) -> dict:
    """Run the identification variants and write identification_results.json/.md (+ the trained-on keys).

    Every row is tested on the whole test split (the same images for every row: ``test_set`` in the JSON gives
    its size and a fingerprint of its keys); cross-condition rows add ``target_accuracy`` on the Backpack* test
    images. ``variants`` restricts the run to rows with those names (each row's ``command`` uses it, so one row
    can be reproduced alone). The real-only 100 % classifier is saved as the feature network for
    evaluate_generation (``<out_dir>/feature_classifier``).
    """
    from microdoppler_finetune.data import load_manifest

    log = log or (lambda _message: None)
    config = config or IdentificationConfig()
    command = command if command is not None else current_command()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(manifest_dir, data_root=data_root) if data_root else load_manifest(manifest_dir)
    log(f"Loading images at {config.image_size}x{config.image_size} ...")
    splits = {s: load_split_images(manifest, s, image_size=config.image_size, num_workers=config.num_workers)
              for s in ("train", "val", "test")}
    test = splits["test"]
    generated = None
    if generated_dir is not None:
        generated = load_generated_images(generated_dir, manifest, image_size=config.image_size,
                                          max_per_person=max_generated_per_person, seed=config.seed)
    condition_names = list(manifest.condition_names)
    target_test = positions_with_condition_prefix(test, condition_names, TARGET_CONDITION_PREFIX)
    source_train = positions_with_condition_prefix(splits["train"], condition_names, SOURCE_CONDITION_PREFIX)
    source_val = positions_with_condition_prefix(splits["val"], condition_names, SOURCE_CONDITION_PREFIX)
    has_cross = cross_condition and bool(target_test and source_train and source_val)
    generated_target = ([] if generated is None else
                        positions_with_condition_prefix(generated, condition_names, TARGET_CONDITION_PREFIX))
    planned, notes = plan_variants(methods, fractions, has_generated=generated is not None,
                                   has_cross_condition=has_cross, has_generated_target=bool(generated_target))
    if not cross_condition:
        notes = [n for n in notes if not n.startswith("cross-condition rows skipped")]
        notes.append("cross-condition rows skipped: turned off (--no_cross_condition).")
    if variants:
        known = {v.name for v in planned}
        missing = sorted(set(variants) - known)
        if missing:
            raise ValueError(f"Unknown variants {missing}; this data allows: {', '.join(sorted(known))}.")
        planned = [v for v in planned if v.name in set(variants)]

    test_keys = set(test.keys)
    test_set = {"split": "test", "images": len(test), "fingerprint": _keys_fingerprint(test.keys)}
    rows, trained_on, selections = [], {}, {}
    for variant in planned:
        log(f"[{variant.name}]")
        start = time.time()
        train_real = splits["train"].subset(source_train) if variant.cross_condition else splits["train"]
        val = splits["val"].subset(source_val) if variant.cross_condition else splits["val"]
        chosen = select_fraction_by_recording(train_real, variant.real_fraction, seed=config.seed)
        same_as = selections.setdefault((variant.cross_condition, tuple(chosen)), variant.real_fraction)
        if same_as != variant.real_fraction:
            note = (f"real fractions {same_as * 100:g}% and {variant.real_fraction * 100:g}% select the same "
                    f"{len(chosen)} images: too few training recordings per person and condition to tell them apart "
                    f"(at least one recording each is always kept).")
            if note not in notes:
                notes.append(note)
        sources = [train_real.subset(chosen)]
        generated_used = 0
        if variant.method == "real+generated":
            extra = generated.subset(generated_target) if variant.cross_condition else generated
            sources.append(extra)
            generated_used = len(extra)
        model, history = train_classifier(sources, val, num_classes=manifest.num_persons, config=config,
                                          augment=variant.method == "real+augmentation",
                                          forbidden_keys=test_keys, log=log)
        report = evaluate_classifier(model, manifest, images=test)
        row = {
            "variant": variant.name, "method": variant.method, "real_fraction": variant.real_fraction,
            "cross_condition": variant.cross_condition,
            "real_images": len(chosen), "real_recordings": len({train_real.recordings[i] for i in chosen}),
            "generated_images": generated_used, "augmentation": variant.method == "real+augmentation",
            "epochs_run": len(history["epochs"]), "best_epoch": history["best_epoch"],
            "val_images": len(val), "val_accuracy": history["best_val_accuracy"],
            "test_images": report["images"], "test_accuracy": report["accuracy"],
            "test_set_fingerprint": test_set["fingerprint"],
            "per_condition_test_accuracy": {k: v["accuracy"] for k, v in report["per_condition"].items()},
            "per_person_test_accuracy": {k: v["accuracy"] for k, v in report["per_person"].items()},
            "confusion_matrix": report["confusion_matrix"],
            "seconds": round(time.time() - start, 1),
            "command": f"{command} --variants {shlex.quote(variant.name)}",
        }
        if variant.cross_condition:
            target = accuracy_report(predict_logits(model, test.subset(target_test)).argmax(1),
                                     test.subset(target_test), manifest.person_names, condition_names)
            row["target_test_images"], row["target_accuracy"] = target["images"], target["accuracy"]
        rows.append(row)
        trained_on[variant.name] = history["train_keys"]
        log(f"  -> val {row['val_accuracy']:.4f}, test {row['test_accuracy']:.4f} "
            f"({row['real_images']} real + {generated_used} generated images, {row['seconds']} s)")
        if variant.method == "real" and variant.real_fraction == 1.0 and not variant.cross_condition:
            model.save_pretrained(str(out / FEATURE_CLASSIFIER_DIR))
            (out / FEATURE_CLASSIFIER_DIR / "training_history.json").write_text(
                json.dumps({k: v for k, v in history.items() if k != "train_keys"}, indent=2))

    results = {"config": asdict(config), "manifest": str(manifest_dir),
               "generated_dir": str(generated_dir) if generated_dir else None, "test_set": test_set,
               "num_persons": manifest.num_persons, "person_names": list(manifest.person_names),
               "condition_names": condition_names, "notes": notes, "rows": rows}
    if variants:
        results, trained_on = _merge_with_previous(out, results, trained_on, log)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    (out / INDICES_JSON).write_text(json.dumps(trained_on))
    (out / RESULTS_MD).write_text(results_markdown(results))
    log(f"Wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    return results


def _merge_with_previous(out: Path, results: dict, trained_on: dict, log) -> tuple[dict, dict]:
    """A rerun of some rows (``variants``) replaces those rows in an earlier table of the same experiment
    (same test set and settings) instead of overwriting the whole table."""
    previous_file = out / RESULTS_JSON
    if not previous_file.is_file():
        return results, trained_on
    previous = json.loads(previous_file.read_text())
    same = (previous.get("test_set") == results["test_set"] and previous.get("config") == results["config"]
            and previous.get("generated_dir") == results["generated_dir"])
    if not same:
        log(f"{previous_file} holds another experiment (test set, settings or generated folder differ): replaced.")
        return results, trained_on
    new_rows = {r["variant"]: r for r in results["rows"]}
    rows = [new_rows.pop(r["variant"], r) for r in previous["rows"]] + list(new_rows.values())
    keys_file = out / INDICES_JSON
    merged_keys = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    merged_keys.update(trained_on)
    return {**results, "rows": rows, "notes": sorted(set(previous.get("notes", [])) | set(results["notes"]))}, \
        merged_keys


def results_markdown(results: dict) -> str:
    test_set = results["test_set"]
    lines = [
        "# Person identification: does generated data help?", "",
        f"Test set: the manifest's test split, {test_set['images']} images (fingerprint "
        f"`{test_set['fingerprint']}`), the same for every row. Best epoch chosen on validation accuracy.",
        f"Classifier preset `{results['config']['preset']}`, {results['config']['image_size']} px, "
        f"at most {results['config']['epochs']} epochs, seed {results['config']['seed']}.", "",
        "| variant | real % | real images (recordings) | generated | best epoch | val acc | test acc | "
        "target acc |", "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        target = (f"{row['target_accuracy']:.4f} ({row['target_test_images']})" if "target_accuracy" in row
                  else "")
        lines.append(f"| {row['variant']} | {row['real_fraction'] * 100:g} | {row['real_images']} "
                     f"({row['real_recordings']}) | {row['generated_images']} | {row['best_epoch']} | "
                     f"{row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | {target} |")
    if any(r["cross_condition"] for r in results["rows"]):
        lines += ["", f"Cross-condition rows train and validate on {SOURCE_CONDITION_PREFIX.capitalize()}* "
                      f"recordings only; target acc is on the {TARGET_CONDITION_PREFIX.capitalize()}* test images."]
    if results["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in results["notes"]]
    lines += ["", "Commands:"] + [f"- {r['variant']}: `{r['command']}`" for r in results["rows"]]
    return "\n".join(lines) + "\n"
