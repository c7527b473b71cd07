"""The one manifest every stage reads: ``manifest.csv`` (one row per image) + ``user_labels.json``.

``manifest.csv`` columns (paths relative to the data root, forward slashes):
    path, person_id, person, condition_id, condition, recording, frame, group, split, sha256, width, height,
    withheld
``split`` is train, val, test or gap (a boundary frame held out of every split, see splits.py); ``group`` is
the unit that went to one split as a whole; ``withheld`` is "test" or "val" for the images of a withheld
person x condition pair (withhold.py), empty otherwise. An entry's ``index`` is its row number (0-based, header
excluded) — the key latent caches and feature caches use.
``user_labels.json`` maps person and condition names to ids and records where the images are and how the
split was made.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Optional, Sequence, Union

from microdoppler_finetune.utils.files import atomic_write_text, file_sha256, text_sha256

from .errors import ManifestFormatError
from .splits import GAP, SPLITS
from .withhold import Withholding, check_training_rows

MANIFEST_FILE = "manifest.csv"
LABELS_FILE = "user_labels.json"
MANIFEST_FORMAT = "microdoppler-manifest/1"
MANIFEST_COLUMNS = ("path", "person_id", "person", "condition_id", "condition", "recording", "frame", "group",
                    "split", "sha256", "width", "height", "withheld")
OPTIONAL_COLUMNS = ("withheld",)  # manifests written before withholding existed have none
_INT_COLUMNS = ("person_id", "condition_id", "width", "height")
ALL = "all"  # train + val + test (never the gap frames)


def render_manifest_csv(rows: Iterable[dict]) -> str:
    """The exact text of manifest.csv (so a rerun can be compared before anything is written)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in MANIFEST_COLUMNS})
    return buffer.getvalue()


def write_text_atomic(path: Path, text: str) -> None:
    """Via a temporary file, so an interrupted run never leaves half a manifest behind."""
    atomic_write_text(path, text)


def sha256_text(text: str) -> str:
    return text_sha256(text)


def manifest_file_path(path_or_dir: Union[str, Path]) -> Path:
    path = Path(path_or_dir)
    return path / MANIFEST_FILE if path.is_dir() else path


def normalize_splits(split: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """"train" -> ("train",); "all" -> train, val, test; a list of names -> those, checked."""
    names = [split] if isinstance(split, str) else list(split)
    out: list[str] = []
    for name in names:
        expanded = SPLITS if name == ALL else (name,)
        for s in expanded:
            if s not in (*SPLITS, GAP):
                raise ValueError(f"Unknown split {s!r}; use one of {', '.join((*SPLITS, GAP, ALL))} or a list of them.")
            if s not in out:
                out.append(s)
    return tuple(out)


@dataclass
class Manifest:
    path: Path  # manifest.csv
    data_root: Path
    entries: list  # one dict per row, with typed ids and an "index" (row number)
    person_names: list
    condition_names: list
    labels: dict = field(default_factory=dict)  # the whole user_labels.json

    @property
    def num_persons(self) -> int:
        return len(self.person_names)

    @property
    def num_conditions(self) -> int:
        return len(self.condition_names)

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    @property
    def withholding(self) -> Optional[Withholding]:
        """The withheld person x condition pairs of this split (None: nothing withheld)."""
        return Withholding.from_dict(self.labels.get("withheld"))

    def entries_for(self, split: Union[str, Sequence[str]]) -> list:
        """Rows of one split, of several (a list), or of ``"all"`` (train+val+test), in manifest order."""
        wanted = normalize_splits(split)
        return [e for e in self.entries if e["split"] in wanted]

    def image_path(self, entry: dict) -> Path:
        return self.data_root / entry["path"]

    def counts(self) -> dict:
        counts = {s: 0 for s in (*SPLITS, GAP)}
        for e in self.entries:
            counts[e["split"]] += 1
        return counts


EDITED_HINT = ("The manifest was edited or damaged; re-run step3_prepare_dataset.py with --overwrite instead of "
               "editing it (and redo the later stages).")


def _check_relative_path(path: str, row: str) -> None:
    """A manifest path is relative to the data root and stays inside it: no absolute path, drive or '..'."""
    pure = PurePosixPath(path)
    windows = PureWindowsPath(path)
    if not path or pure.is_absolute() or windows.drive or windows.root or ".." in pure.parts or ".." in windows.parts:
        raise ManifestFormatError(f"{row}: path {path!r} is not inside the data root (absolute paths and '..' are "
                                  f"refused: every image must be under data_root). {EDITED_HINT}")


def _typed(row: dict, index: int, file: Path) -> dict:
    entry = dict(row)
    entry["withheld"] = entry.get("withheld") or ""
    try:
        for key in _INT_COLUMNS:
            entry[key] = int(row[key])
        entry["frame"] = int(row["frame"]) if row["frame"] not in ("", None) else None
    except (TypeError, ValueError) as exc:
        raise ManifestFormatError(f"{file}, data row {index + 1}: {exc}. The manifest was edited or damaged; "
                                  f"re-run step3_prepare_dataset.py with --overwrite.") from exc
    entry["index"] = index
    return entry


def load_manifest(path_or_dir: Union[str, Path], data_root: Optional[Union[str, Path]] = None) -> Manifest:
    """Read manifest.csv (or the folder holding it) and its user_labels.json.

    ``data_root`` overrides where the images are (e.g. the same dataset attached at another path).
    """
    file = manifest_file_path(path_or_dir)
    if not file.is_file():
        raise ManifestFormatError(f"No manifest at {file}. Run step3 first: python microdoppler_finetune/"
                                  f"step3_prepare_dataset.py --data_root DATA --output_dir {file.parent}")
    labels_file = file.parent / LABELS_FILE
    if not labels_file.is_file():
        raise ManifestFormatError(f"{labels_file} is missing next to {file}; step3 writes both. Re-run step3 "
                                  f"with --overwrite into this folder.")
    try:
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestFormatError(f"{labels_file} is not valid JSON ({exc}); re-run step3 with --overwrite.") from exc
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ManifestFormatError(f"{file} lacks the columns {', '.join(missing)}; it was not written by this "
                                      f"version of step3. Re-run step3 with --overwrite.")
        entries = [_typed(row, i, file) for i, row in enumerate(reader)]
    person_names = list(labels.get("person_names", []))
    condition_names = list(labels.get("condition_names", []))
    first_row: dict = {}
    for e in entries:
        row = f"{file}, data row {e['index'] + 1}"
        if e["split"] not in (*SPLITS, GAP):
            raise ManifestFormatError(f"{row}: unknown split {e['split']!r}. {EDITED_HINT}")
        if not (0 <= e["person_id"] < len(person_names) and person_names[e["person_id"]] == e["person"]):
            raise ManifestFormatError(f"{row}: person_id {e['person_id']} / person {e['person']!r} do not match "
                                      f"{labels_file} (people: {', '.join(person_names)}). {EDITED_HINT}")
        if not (0 <= e["condition_id"] < len(condition_names) and condition_names[e["condition_id"]] == e["condition"]):
            raise ManifestFormatError(f"{row}: condition_id {e['condition_id']} / condition {e['condition']!r} do "
                                      f"not match {labels_file}. {EDITED_HINT}")
        _check_relative_path(e["path"], row)
        if e["path"] in first_row:
            raise ManifestFormatError(f"{row}: {e['path']!r} is listed twice (first in data row "
                                      f"{first_row[e['path']] + 1}); one image in two rows can land in two splits. "
                                      f"{EDITED_HINT}")
        first_row[e["path"]] = e["index"]
    check_training_rows(entries, Withholding.from_dict(labels.get("withheld")), str(file))
    root = Path(data_root) if data_root is not None else Path(labels.get("data_root", ""))
    return Manifest(path=file, data_root=root, entries=entries, person_names=person_names,
                    condition_names=condition_names, labels=labels)
