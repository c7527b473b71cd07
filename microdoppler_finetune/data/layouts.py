"""Find the images of a micro-Doppler data folder and what their folders and names say about them.

Supported layouts (``<root>`` is the folder given as ``--data_root``):

* ``<root>/ID_1 … ID_31/*.jpg`` — one folder per person (the Kaggle dataset), one walking condition;
* ``<root>/<condition>/ID_n/*.jpg`` — one folder per walking condition, then one per person;
* ``<root>/<nn>/<condition>/*.jpg`` — one folder per person number, then one per condition.

A file name like ``ID1_case1_1_Doppler17.jpg`` carries the recording (``case1_1``) and the frame number (17).
Nothing here opens an image: validation.py does that.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

from .errors import UnknownLayoutError, UnreadableFolderError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Walking conditions seen in the users' multi-condition data; their order here is their id order.
KNOWN_CONDITIONS = (
    "Normal_free", "Normal_line", "Backpack_free", "Backpack_line",
    "Bag_free", "Bag_line", "Bag_Phone_free", "Bag_Phone_line",
)
# The single condition of a layout without condition folders.
DEFAULT_CONDITION = "default"

LAYOUT_PERSON = "person"                        # <root>/ID_n/*.jpg
LAYOUT_CONDITION_PERSON = "condition/person"    # <root>/<condition>/ID_n/*.jpg
LAYOUT_PERSON_CONDITION = "person/condition"    # <root>/<nn>/<condition>/*.jpg

EXPECTED_LAYOUTS = (
    "Supported layouts:\n"
    "  <root>/ID_1 ... ID_31/*.jpg        one folder per person, e.g. ID_1/ID1_case1_1_Doppler17.jpg\n"
    "  <root>/<condition>/ID_n/*.jpg      one folder per walking condition, then one per person\n"
    "  <root>/<nn>/<condition>/*.jpg      one folder per person number (01, 02, ...), then one per condition\n"
    f"Conditions are folder names such as {', '.join(KNOWN_CONDITIONS)}.\n"
    f"Images: {' '.join(IMAGE_EXTENSIONS)} (any case)."
)

_PERSON_FOLDER = re.compile(r"^ID[_\- ]?(\d+)$", re.IGNORECASE)
_NUMBER_FOLDER = re.compile(r"^\d+$")
# Folder names that mean the data was already split; treating them as conditions would mislabel it.
_SPLIT_FOLDER_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}

# File-name parts. The person token at the start ("ID1_") is only used to cross-check the folder.
_NAME_PERSON = re.compile(r"^ID[_\-]?(\d+)(?:[_\-]|$)", re.IGNORECASE)
_NAME_DOPPLER = re.compile(r"^(?P<rec>.*?)[_\- ]*doppler[_\- ]?(?P<frame>\d+)$", re.IGNORECASE)
_NAME_TRAILING_NUMBER = re.compile(r"^(?P<prefix>.*?)(?P<frame>\d+)$")
_TRAILING_WORD = re.compile(r"[_\- ]+[A-Za-z]+$")


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ID_2 before ID_10, frame9 before frame10."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts)


def condition_sort_key(name: str) -> tuple:
    """Known conditions in their fixed order (case-insensitive), then any other name naturally."""
    lowered = [c.lower() for c in KNOWN_CONDITIONS]
    if name.lower() in lowered:
        return (0, lowered.index(name.lower()), ())
    return (1, 0, natural_key(name))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


class ParsedName(NamedTuple):
    recording: str  # "" when the name carries no recording
    frame: Optional[int]  # None when the name carries no frame number
    name_person: Optional[int]  # the number of a leading "ID<n>_" token, if any


def parse_image_name(stem: str) -> ParsedName:
    """Recording and frame from a file name without extension.

    ``ID1_case1_1_Doppler17`` -> ("case1_1", 17). Otherwise the trailing number is the frame and what precedes
    it (minus a leading ID token and a trailing word like "img" or "frame") is the recording, but only when it
    contains a digit: ``rec3_0012`` -> ("rec3", 12), while ``img_0012`` and ``0012`` carry no recording.
    """
    name_person = None
    rest = stem
    person_match = _NAME_PERSON.match(stem)
    if person_match:
        name_person = int(person_match.group(1))
        rest = stem[person_match.end():]
    doppler = _NAME_DOPPLER.match(rest)
    if doppler:
        recording = doppler.group("rec").strip("_- ")
        return ParsedName(recording, int(doppler.group("frame")), name_person)
    trailing = _NAME_TRAILING_NUMBER.match(rest)
    if not trailing:
        return ParsedName(rest.strip("_- ") if any(c.isdigit() for c in rest) else "", None, name_person)
    prefix = trailing.group("prefix").rstrip("_- .")
    prefix = _TRAILING_WORD.sub("", prefix)  # "case2_img" -> "case2"
    recording = prefix if any(c.isdigit() for c in prefix) else ""
    return ParsedName(recording, int(trailing.group("frame")), name_person)


@dataclass(frozen=True)
class ScannedImage:
    path: Path  # absolute
    rel_path: str  # relative to the data root, with forward slashes (the manifest's `path`)
    person: str  # the person folder's name, e.g. "ID_7" or "07"
    condition: str
    recording: str
    frame: Optional[int]
    name_person: Optional[int]


@dataclass
class ScanResult:
    root: Path
    layout: str
    images: list[ScannedImage]
    persons: list[str]  # natural order; includes person folders that hold no image file
    conditions: list[str]
    person_folders: dict[str, list[str]]  # person -> its folders, relative to root (for error messages)
    ignored_files: Counter = field(default_factory=Counter)  # non-image files, by extension
    notes: list[str] = field(default_factory=list)


def _visible(entry: os.DirEntry) -> bool:
    return not (entry.name.startswith(".") or entry.name.startswith("__"))


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder``; a folder that cannot be listed stops the scan (its images would be
    missing silently otherwise)."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if _visible(e)]
    except OSError as exc:
        raise UnreadableFolderError(
            f"Cannot list the folder {folder} ({type(exc).__name__}: {exc.strerror or exc}). Its images would be "
            f"missing from the dataset. Fix its permissions (e.g. chmod -R u+rX on it), or move it out of the data "
            f"folder to leave it out on purpose.") from exc


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symbolic link loop
        return False


def _is_file_like(entry: os.DirEntry) -> bool:
    """A regular file, or a symbolic link that leads nowhere (loop, missing target): such a link with an image
    name is kept so validation lists it as unreadable instead of the image disappearing without a word."""
    try:
        return entry.is_file() or (entry.is_symlink() and not entry.is_dir())
    except OSError:  # ELOOP from following a symbolic link loop
        return True


def _subdirs(folder: Path) -> list[Path]:
    dirs = [Path(e.path) for e in _entries(folder) if _is_dir(e)]
    return sorted(dirs, key=lambda p: natural_key(p.name))


def _files(folder: Path) -> list[Path]:
    files = [Path(e.path) for e in _entries(folder) if _is_file_like(e)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _absolute(path: Path) -> Path:
    """``path`` with symbolic links resolved, or only made absolute when they loop (validation reports it)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _has_images(folder: Path) -> bool:
    return any(is_image_file(f) for f in _files(folder))


def person_number(folder_name: str) -> Optional[int]:
    """7 for "ID_7", "ID7" or "07"; None for other names."""
    match = _PERSON_FOLDER.match(folder_name)
    if match:
        return int(match.group(1))
    return int(folder_name) if _NUMBER_FOLDER.match(folder_name) else None


def _is_person_folder(name: str, allow_number: bool) -> bool:
    return bool(_PERSON_FOLDER.match(name)) or (allow_number and bool(_NUMBER_FOLDER.match(name)))


def _unknown(root: Path, reason: str, hint: str = "") -> UnknownLayoutError:
    return UnknownLayoutError(f"{root} does not match a supported layout: {reason}\n{EXPECTED_LAYOUTS}{hint}")


def _images_anywhere(folder: Path, depth: int = 2) -> bool:
    if _has_images(folder):
        return True
    return depth > 0 and any(_images_anywhere(d, depth - 1) for d in _subdirs(folder))


def detect_layout(root: Path, *, hint: bool = True) -> str:
    """Which supported layout ``root`` has; UnknownLayoutError (naming the folder) when none fits.

    ``hint``: when nothing fits, look below ``root`` for a folder that does and name it in the error.
    """
    root = Path(root)
    if not root.is_dir():
        raise UnknownLayoutError(f"The data folder {root} does not exist or is not a folder. Pass --data_root "
                                 f"with the folder that holds your spectrograms.\n{EXPECTED_LAYOUTS}")
    subdirs = _subdirs(root)
    loose = [f.name for f in _files(root) if is_image_file(f)]
    if loose:
        raise _unknown(root, f"it holds images directly ({loose[0]}, ...), so they belong to no person folder.")
    if not subdirs:
        raise _unknown(root, "it has no subfolders.")

    person_like = [d for d in subdirs if _is_person_folder(d.name, allow_number=True)]
    if person_like:
        others = [d.name for d in subdirs if d not in person_like and _images_anywhere(d)]
        if others:
            raise _unknown(root, f"besides person folders ({person_like[0].name}, ...) it has folders with "
                                 f"images that are not person folders: {', '.join(others[:5])}.")
        with_images = [d for d in person_like if _has_images(d)]
        with_conditions = [d for d in person_like if not _has_images(d)
                           and any(_has_images(c) for c in _subdirs(d))]
        if with_images and with_conditions:
            raise _unknown(root, f"some person folders hold images ({with_images[0].name}) and others hold "
                                 f"condition folders ({with_conditions[0].name}); use one layout.")
        if with_images:
            return LAYOUT_PERSON
        if with_conditions:
            return LAYOUT_PERSON_CONDITION
        raise _unknown(root, f"its person folders ({person_like[0].name}, ...) hold no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")

    # <root>/<condition>/ID_n/*: every folder that holds images below it must be a condition folder.
    with_data = [d for d in subdirs if _images_anywhere(d)]
    conditions = [d for d in with_data
                  if any(_is_person_folder(p.name, allow_number=False) for p in _subdirs(d))]
    not_conditions = [d.name for d in with_data if d not in conditions]
    if not conditions:
        names = ", ".join(d.name for d in subdirs[:5])
        raise _unknown(root, f"none of its folders ({names}) is a person folder (ID_n) or a condition folder "
                             f"holding person folders.", _layout_hint(root) if hint else "")
    if not_conditions:
        raise _unknown(root, f"folders {', '.join(not_conditions[:5])} hold images but no person folders (ID_n), "
                             f"while {conditions[0].name} is a condition folder.")
    split_like = [d.name for d in conditions if d.name.lower() in _SPLIT_FOLDER_NAMES]
    if split_like:
        raise _unknown(root, f"its folders {', '.join(split_like)} look like an existing train/test split, not "
                             f"walking conditions. Pass one of them as --data_root, or merge them: this tool "
                             f"makes its own leak-free split.")
    if len(conditions) == 1 and conditions[0].name.lower() not in [c.lower() for c in KNOWN_CONDITIONS]:
        # One folder of unknown name around person folders is a wrapper, not a condition.
        raise _unknown(root, f"it only wraps {conditions[0].name}, which holds the person folders.",
                       f"\nPass --data_root {conditions[0]}")
    return LAYOUT_CONDITION_PERSON


def _layout_hint(root: Path) -> str:
    found = find_dataset_roots(root, max_depth=3)
    if not found:
        return ""
    return "\nFound a supported layout below it: " + ", ".join(str(p) for p in found[:5]) + \
        f" — pass --data_root {found[0]}"


def _collect(folder: Path, root: Path, person: str, condition: str, out: list[ScannedImage],
             ignored: Counter, notes: list[str]) -> None:
    for f in _files(folder):
        if not is_image_file(f):
            ignored[f.suffix.lower() or "(no extension)"] += 1
            continue
        parsed = parse_image_name(f.stem)
        out.append(ScannedImage(path=_absolute(f), rel_path=f.relative_to(root).as_posix(), person=person,
                                condition=condition, recording=parsed.recording, frame=parsed.frame,
                                name_person=parsed.name_person))
    nested = _subdirs(folder)
    if nested:
        notes.append(f"ignored {len(nested)} subfolder(s) of {folder.relative_to(root).as_posix()} "
                     f"(e.g. {nested[0].name}): images are read one level deep only")


def scan_dataset(root: Path) -> ScanResult:
    """Every image file under ``root`` with its person, condition, recording and frame (no image is opened)."""
    root = Path(root).resolve()
    layout = detect_layout(root)
    images: list[ScannedImage] = []
    ignored: Counter = Counter()
    notes: list[str] = []
    persons: set[str] = set()
    conditions: set[str] = set()
    person_folders: dict[str, list[str]] = {}

    def visit(folder: Path, person: str, condition: str) -> None:
        persons.add(person)
        conditions.add(condition)
        person_folders.setdefault(person, []).append(folder.relative_to(root).as_posix())
        _collect(folder, root, person, condition, images, ignored, notes)

    if layout == LAYOUT_PERSON:
        for person_dir in _subdirs(root):
            if _is_person_folder(person_dir.name, allow_number=True):
                visit(person_dir, person_dir.name, DEFAULT_CONDITION)
    elif layout == LAYOUT_PERSON_CONDITION:
        for person_dir in _subdirs(root):
            if not _is_person_folder(person_dir.name, allow_number=True):
                continue
            condition_dirs = _subdirs(person_dir)
            if not condition_dirs:
                # Still a person: step3 then fails naming this folder instead of silently dropping someone.
                persons.add(person_dir.name)
                person_folders.setdefault(person_dir.name, []).append(person_dir.relative_to(root).as_posix())
            for condition_dir in condition_dirs:
                visit(condition_dir, person_dir.name, condition_dir.name)
    else:
        for condition_dir in _subdirs(root):
            for person_dir in _subdirs(condition_dir):
                if _is_person_folder(person_dir.name, allow_number=False):
                    visit(person_dir, person_dir.name, condition_dir.name)
    _check_person_name_clashes(root, persons)
    return ScanResult(
        root=root, layout=layout, images=images,
        persons=sorted(persons, key=natural_key),
        conditions=sorted(conditions, key=condition_sort_key),
        person_folders=person_folders, ignored_files=ignored, notes=notes,
    )


def _check_person_name_clashes(root: Path, persons: Iterable[str]) -> None:
    """ID_1 and ID1 (or 01 and 1) in one data folder would become two people; refuse that."""
    by_number: dict[int, list[str]] = {}
    for name in persons:
        number = person_number(name)
        if number is not None:
            by_number.setdefault(number, []).append(name)
    clashes = [names for names in by_number.values() if len(names) > 1]
    if clashes:
        raise UnknownLayoutError(f"{root}: person folders {' and '.join(sorted(clashes[0]))} have the same number. "
                                 f"Rename them to one spelling so each person has one folder name.")


def find_dataset_roots(search_root: Path, max_depth: int = 4) -> list[Path]:
    """Folders below ``search_root`` (not itself) that have a supported layout; the outermost match wins.

    Used by ``--kaggle`` to find the attached dataset under /kaggle/input without knowing its name.
    """
    search_root = Path(search_root)
    if not search_root.is_dir():
        return []
    found: list[Path] = []
    frontier = [(d, 1) for d in _subdirs(search_root)]
    while frontier:
        folder, depth = frontier.pop(0)
        try:
            detect_layout(folder, hint=False)
            found.append(folder)
            continue  # its own subfolders are part of this dataset
        except UnknownLayoutError:
            pass
        except (OSError, UnreadableFolderError):
            continue  # unreadable folder: not ours to judge
        if depth < max_depth and not _is_person_folder(folder.name, allow_number=False):
            frontier.extend((d, depth + 1) for d in _subdirs(folder))
    return sorted(found, key=lambda p: natural_key(str(p)))
