"""Open every image once, hash it, and decide: usable, usable after conversion (warning), or skipped.

Policy (one place): files that cannot give a trustworthy training image are skipped and listed — empty,
unreadable, not an image, corrupt, truncated, too small, too many pixels to decode safely, the same content
filed under two people (its label is unknown) and repeated copies within one person (one copy could land in
train and another in test). Files that convert cleanly are kept with a warning — alpha channel, grayscale,
CMYK, palette, non-square, very large — and are converted to RGB / resized when loaded (images.py).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, UnidentifiedImageError

from .layouts import ScannedImage, natural_key, person_number

SKIPPED = "skipped"
WARNING = "warning"

# reason -> (severity, what happens to the file)
REASONS = {
    "empty_file": (SKIPPED, "the file is empty (0 bytes)"),
    "unreadable": (SKIPPED, "the file cannot be read"),
    "not_an_image": (SKIPPED, "the content is not an image Pillow can identify"),
    "corrupt": (SKIPPED, "the image data is corrupt"),
    "truncated": (SKIPPED, "the image data ends early (truncated file)"),
    "too_small": (SKIPPED, "the image is too small to be a spectrogram"),
    "too_many_pixels": (SKIPPED, "the image has too many pixels to decode safely"),
    "duplicate_across_people": (SKIPPED, "the same file content is filed under several people; label unknown"),
    "duplicate_within_person": (SKIPPED, "an identical copy of another image of this person is kept instead"),
    "alpha": (WARNING, "has an alpha channel; it is dropped at load"),
    "grayscale": (WARNING, "grayscale; copied into the three RGB channels at load"),
    "cmyk": (WARNING, "CMYK; converted to RGB at load"),
    "palette": (WARNING, "palette image; converted to RGB at load"),
    "other_mode": (WARNING, "unusual colour mode; converted to RGB at load"),
    "non_square": (WARNING, "not square; resized to a square at load (the aspect ratio changes)"),
    "large": (WARNING, "very large; resized at load (slow to decode)"),
    "name_person_mismatch": (WARNING, "the file name's ID differs from its person folder; the folder is used"),
    "unusual_size": (WARNING, "its size differs from most images of the dataset; resized at load like the others"),
    "missing_person": (WARNING, "people are numbered around this one, but it has no folder: not in the dataset"),
    "missing_condition": (WARNING, "this person has no folder in this walking condition, others have"),
}

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class ImageProblem:
    path: str  # relative to the data root
    person: str
    condition: str
    reason: str
    severity: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageCheck:
    """What opening one file found. ``problems`` holds (reason, detail) pairs."""

    size_bytes: int = 0
    sha256: Optional[str] = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    problems: list = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return all(REASONS[reason][0] != SKIPPED for reason, _ in self.problems)


def check_image_bytes(data: bytes, *, min_side: int = 32, max_side: int = 4096) -> ImageCheck:
    """Identify, verify and fully decode ``data``; never raises for bad content."""
    check = ImageCheck(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        check.problems.append(("empty_file", "0 bytes"))
        return check
    with warnings.catch_warnings():
        # A DecompressionBombWarning (between 1x and 2x PIL's pixel limit) is not an error: only note size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                check.format, check.mode = img.format or "", img.mode
                check.width, check.height = img.size
                img.verify()  # structure and checksums (PNG CRCs); does not decode the pixels
        except Image.DecompressionBombError as exc:
            check.problems.append(("too_many_pixels", str(exc)))
            return check
        except UnidentifiedImageError:
            check.problems.append(("not_an_image", "Pillow cannot identify the content"))
            return check
        except Exception as exc:  # noqa: BLE001 - any failure of verify() means corrupt data
            check.problems.append(("truncated" if "truncat" in str(exc).lower() else "corrupt",
                                   f"{type(exc).__name__}: {exc}"))
            return check
        try:
            # verify() leaves the image unusable; decode a fresh one in full to catch truncated pixel data.
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                transparency = "transparency" in img.info
        except Exception as exc:  # noqa: BLE001
            reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
            check.problems.append((reason, f"{type(exc).__name__}: {exc}"))
            return check

    w, h, mode = check.width, check.height, check.mode
    if min(w, h) < min_side:
        check.problems.append(("too_small", f"{w}x{h} pixels; the smallest accepted side is {min_side}"))
        return check
    if mode in _ALPHA_MODES or (mode == "P" and transparency):
        check.problems.append(("alpha", f"mode {mode}"))
    elif mode in _GRAY_MODES:
        check.problems.append(("grayscale", f"mode {mode}"))
    elif mode == "CMYK":
        check.problems.append(("cmyk", "mode CMYK"))
    elif mode == "P":
        check.problems.append(("palette", "mode P"))
    elif mode != "RGB":
        check.problems.append(("other_mode", f"mode {mode}"))
    if w != h:
        check.problems.append(("non_square", f"{w}x{h} pixels"))
    if max(w, h) > max_side:
        check.problems.append(("large", f"{w}x{h} pixels; larger than {max_side}"))
    return check


def check_image_file(path: Path, *, min_side: int = 32, max_side: int = 4096) -> ImageCheck:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return ImageCheck(problems=[("unreadable", f"{type(exc).__name__}: {exc}")])
    return check_image_bytes(data, min_side=min_side, max_side=max_side)


@dataclass
class ValidationResult:
    usable: list  # [(ScannedImage, ImageCheck)] in scan order
    problems: list  # [ImageProblem], one per (file, reason)
    checked: int

    def skipped_paths(self) -> set:
        return {p.path for p in self.problems if p.severity == SKIPPED}

    def counts(self) -> dict:
        counts: dict = {}
        for p in self.problems:
            counts[p.reason] = counts.get(p.reason, 0) + 1
        return dict(sorted(counts.items()))


def _problem(image: ScannedImage, reason: str, detail: str) -> ImageProblem:
    return ImageProblem(path=image.rel_path, person=image.person, condition=image.condition, reason=reason,
                        severity=REASONS[reason][0], detail=detail)


def validate_images(images: Sequence[ScannedImage], *, min_side: int = 32, max_side: int = 4096,
                    workers: Optional[int] = None) -> ValidationResult:
    """Check every file (in parallel threads: Pillow decodes and hashlib hashes without the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checks = list(pool.map(lambda im: check_image_file(im.path, min_side=min_side, max_side=max_side),
                               images))
    problems: list[ImageProblem] = []
    candidates = []
    for image, check in zip(images, checks):
        for reason, detail in check.problems:
            problems.append(_problem(image, reason, detail))
        folder_number = person_number(image.person)
        if image.name_person is not None and folder_number is not None and image.name_person != folder_number:
            problems.append(_problem(image, "name_person_mismatch",
                                     f"name says ID{image.name_person}, folder is {image.person}"))
        if check.usable:
            candidates.append((image, check))
    duplicate_problems, dropped = _duplicates(candidates)
    problems.extend(duplicate_problems)
    usable = [(im, ck) for im, ck in candidates if im.rel_path not in dropped]
    problems.extend(_unusual_sizes(usable))
    problems.sort(key=lambda p: (natural_key(p.path), p.reason))
    return ValidationResult(usable=usable, problems=problems, checked=len(images))


def _duplicates(candidates) -> tuple[list[ImageProblem], set]:
    """Identical content: all copies go when they span people; within one person the first copy stays."""
    by_hash: dict[str, list[ScannedImage]] = {}
    for image, check in candidates:
        by_hash.setdefault(check.sha256, []).append(image)
    problems, dropped = [], set()
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        copies = sorted(copies, key=lambda im: natural_key(im.rel_path))
        people = sorted({im.person for im in copies}, key=natural_key)
        if len(people) > 1:
            for image in copies:
                others = [c.rel_path for c in copies if c is not image]
                problems.append(_problem(image, "duplicate_across_people",
                                         f"same content as {', '.join(others)} (people {', '.join(people)})"))
                dropped.add(image.rel_path)
        else:
            for image in copies[1:]:
                problems.append(_problem(image, "duplicate_within_person", f"same content as {copies[0].rel_path}"))
                dropped.add(image.rel_path)
    return problems, dropped


def _unusual_sizes(usable) -> list[ImageProblem]:
    """Images whose size differs from the most common one (a different radar setting or export, often)."""
    sizes = Counter((check.width, check.height) for _, check in usable)
    if len(sizes) < 2:
        return []
    (w, h), _ = sizes.most_common(1)[0]
    flagged = {"non_square", "large"}  # already reported for their size
    return [_problem(image, "unusual_size", f"{check.width}x{check.height} pixels; most images are {w}x{h}")
            for image, check in usable if (check.width, check.height) != (w, h)
            and not flagged & {reason for reason, _ in check.problems}]


def scan_problems(scan) -> list[ImageProblem]:
    """Warnings about the folders rather than the files: a person number missing between others, and (with
    walking-condition folders) a person absent from a condition the others have."""
    problems = []
    numbered = {person_number(p): p for p in scan.persons if person_number(p) is not None}
    if len(numbered) >= 2:
        first, last = numbered[min(numbered)], numbered[max(numbered)]
        spelled = re.match(r"^(\D*)(\d+)$", first)  # "ID_" + "1", or "" + "01"
        for number in range(min(numbered), max(numbered) + 1):
            if number in numbered:
                continue
            digits = str(number).zfill(len(spelled.group(2)) if spelled.group(2).startswith("0") else 1)
            name = spelled.group(1) + digits
            problems.append(ImageProblem(
                path=name, person=name, condition="", reason="missing_person", severity=WARNING,
                detail=f"people {first}..{last} have folders, {name} has none; add it if that person was recorded"))
    if len(scan.conditions) > 1:
        conditions_of: dict = {}
        for image in scan.images:
            conditions_of.setdefault(image.person, set()).add(image.condition)
        for person in scan.persons:
            for condition in scan.conditions:
                if person in conditions_of and condition not in conditions_of[person]:
                    problems.append(ImageProblem(
                        path=f"{condition}/{person}", person=person, condition=condition, reason="missing_condition",
                        severity=WARNING, detail=f"{person} has no images in {condition}; the models never see "
                                                 f"that pair in training"))
    return problems


def add_scan_problems(validation: ValidationResult, scan) -> ValidationResult:
    """``validation`` with the folder-level warnings of ``scan`` added (in the usual order)."""
    validation.problems.extend(scan_problems(scan))
    validation.problems.sort(key=lambda p: (natural_key(p.path), p.reason))
    return validation
