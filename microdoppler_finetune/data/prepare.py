"""Step 3 as a library: scan -> validate -> split -> write the manifest once.

Output folder (never inside the data folder):
    manifest.csv        one row per usable image, with its split (manifest.py)
    user_labels.json    person/condition names <-> ids, data_root, settings, counts
    problems.json/.csv  every file that was skipped or kept with a warning, and why
    split_summary.txt   the printed split summary
    split_summary.json  the same per cell, the frame overlap measured per recording and the gaps used, and
                        the content leak check (leak_check.py)
"""
from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Union

from ..environment import default_work_dir, kaggle_input_root
from .errors import DatasetError, ManifestExistsError, NoUsableImagesError, OutputInsideDataError, UnknownLayoutError
from .layouts import EXPECTED_LAYOUTS, find_dataset_roots, natural_key, scan_dataset
from .leak_check import LeakReport, check_leaks
from .manifest import LABELS_FILE, MANIFEST_FILE, MANIFEST_FORMAT, render_manifest_csv, sha256_text, write_text_atomic
from .overlap import MATCH_CORRELATION, features, load_thumbnails, measure_overlap
from .splits import (
    GAP,
    SPLITS,
    Assignment,
    SplitUnit,
    check_fractions,
    check_split_unit,
    find_leaks,
    frame_order,
    split_cells,
)
from .validation import REASONS, SKIPPED, ValidationResult, add_scan_problems, validate_images
from .withhold import Withholding, WithholdSpec, choose_withheld

PROBLEMS_JSON = "problems.json"
PROBLEMS_CSV = "problems.csv"
SUMMARY_FILE = "split_summary.txt"
SUMMARY_JSON = "split_summary.json"
SUMMARY_FORMAT = "microdoppler-split-summary/1"
DEFAULT_GAP_FRAMES = 0  # a minimum only: the gap at a cut is the overlap measured from the images
MAX_LEAK_LINES = 10  # leak groups printed; split_summary.json has them all
SPLIT_RULES = (
    "Stratified by (person, condition). split_unit auto: cells with at least min_recordings recordings are "
    "split by whole recordings (fractions may be off); smaller cells (and names without recordings) are cut "
    "into one contiguous block per split, leaving out (split 'gap') the frames at a cut inside a recording "
    "that overlap the other side in time (measured from the images, at least gap_frames). recording: never "
    "cut; block: always cut. Afterwards val/test frames are compared by content with the training frames."
)


class SplitLeakError(DatasetError):
    """--strict: the content check found val/test frames with a near copy in training."""


def default_output_dir(kaggle: bool = False) -> Path:
    """<work_dir>/dataset: ./work_dir/dataset, or /kaggle/working/work_dir/dataset with --kaggle."""
    return default_work_dir(kaggle=kaggle) / "dataset"


def discover_data_root(search_root: Optional[Path] = None) -> Path:
    """The one folder under ``search_root`` (default: the Kaggle input root) with a supported layout."""
    search_root = Path(search_root) if search_root is not None else kaggle_input_root()
    found = find_dataset_roots(search_root)
    if not found:
        raise UnknownLayoutError(f"No folder under {search_root} has a supported layout. Attach the dataset to the "
                                 f"notebook (Add Input) or pass --data_root.\n{EXPECTED_LAYOUTS}")
    if len(found) > 1:
        raise UnknownLayoutError(f"Several folders under {search_root} hold a dataset: "
                                 f"{', '.join(str(p) for p in found)}. Pass --data_root with the one to use.")
    return found[0]


def _refuse_output_inside(data_root: Path, output_dir: Path) -> None:
    if output_dir == data_root or output_dir.is_relative_to(data_root):
        raise OutputInsideDataError(
            f"The output folder {output_dir} is inside the data folder {data_root}. step3 never writes into the "
            f"input data; pass another --output_dir (default: ./work_dir/dataset).")


def _usable_problem_text(validation: ValidationResult, person: str, limit: int = 5) -> str:
    rows = [p for p in validation.problems if p.person == person and p.severity == SKIPPED]
    lines = [f"    {p.path}: {p.reason} ({p.detail})" for p in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"    ... and {len(rows) - limit} more")
    return "\n".join(lines)


def _check_every_person_has_images(scan, validation: ValidationResult) -> None:
    usable_people = Counter(image.person for image, _ in validation.usable)
    empty = [p for p in scan.persons if usable_people[p] == 0]
    if not empty:
        return
    parts = []
    for person in empty:
        folders = ", ".join(str(scan.root / f) for f in scan.person_folders.get(person, [person]))
        detail = _usable_problem_text(validation, person) or "    (no image files: .jpg .jpeg .png .bmp)"
        parts.append(f"  {person} (folder {folders}) has no usable image:\n{detail}")
    raise NoUsableImagesError(
        f"{len(empty)} person folder(s) in {scan.root} have no usable image, so that person cannot be learned "
        f"or tested:\n" + "\n".join(parts) +
        "\nReplace the broken files, or move the folder out of the data folder to leave that person out.")


def _problems_csv(validation: ValidationResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "person", "condition", "severity", "reason", "detail"],
                            lineterminator="\n")
    writer.writeheader()
    for p in validation.problems:
        writer.writerow(p.to_dict())
    return buffer.getvalue()


def problems_summary(validation: ValidationResult, limit: int = 10) -> str:
    skipped = validation.skipped_paths()
    warned = {p.path for p in validation.problems if p.severity != SKIPPED} - skipped
    lines = [(f"Checked {validation.checked} image files: {len(validation.usable)} usable "
              f"({len(warned)} of them with warnings), {len(skipped)} skipped.")]
    for reason, count in validation.counts().items():
        severity, meaning = REASONS[reason]
        lines.append(f"  {count:5d} {severity:8s} {reason}: {meaning}")
    for p in validation.problems[:limit]:
        lines.append(f"  [{p.severity}] {p.path}: {p.reason} ({p.detail})")
    if len(validation.problems) > limit:
        lines.append(f"  ... {len(validation.problems) - limit} more in {PROBLEMS_CSV}")
    return "\n".join(lines)


def _cell_note(report) -> str:
    parts = [report.note] if report.note else []
    if report.gaps:
        cuts = ", ".join(f"{rec or '(unnamed)'} {n}" for rec, n in report.gaps.items())
        parts.append(f"gap frames at cuts: {cuts}")
    return " ".join(parts)


def split_summary_text(rows: list, reports: list, person_names: list, condition_names: list,
                       val_fraction: float, test_fraction: float) -> str:
    per_person = {p: Counter() for p in person_names}
    per_condition = {c: Counter() for c in condition_names}
    for row in rows:
        per_person[row["person"]][row["split"]] += 1
        per_condition[row["condition"]][row["split"]] += 1
    total = Counter(row["split"] for row in rows)
    n = sum(total.values())
    cols = (*SPLITS, GAP)
    width = max([len("condition")] + [len(p) for p in (*person_names, *condition_names)]) + 2
    lines = [f"Split summary ({n} images; requested val {val_fraction:.0%}, test {test_fraction:.0%}):",
             "person".ljust(width) + "".join(c.rjust(7) for c in cols) + "  recordings  method"]
    by_person_reports: dict = {}
    for r in reports:
        by_person_reports.setdefault(r.person, []).append(r)
    for person in person_names:
        reps = by_person_reports.get(person, [])
        methods = ",".join(sorted({r.method for r in reps}))
        recordings = sum(r.recordings for r in reps)
        lines.append(person.ljust(width) + "".join(str(per_person[person][c]).rjust(7) for c in cols)
                     + f"  {recordings:10d}  {methods}")
    lines.append("total".ljust(width) + "".join(str(total[c]).rjust(7) for c in cols))
    used = sum(total[s] for s in SPLITS) or 1
    lines.append("fraction".ljust(width) + "".join(f"{total[s] / used:7.1%}" for s in SPLITS)
                 + "  (of the images in train/val/test)")
    if len(condition_names) > 1:
        lines.append("condition".ljust(width) + "".join(c.rjust(7) for c in cols))
        for c in condition_names:
            lines.append(c.ljust(width) + "".join(str(per_condition[c][s]).rjust(7) for s in cols))
    notes = [f"  {r.person}/{r.condition}: {_cell_note(r)}" for r in reports if r.note or r.gaps]
    if notes:
        lines.append("Notes:")
        lines.extend(notes)
    return "\n".join(lines)


def measure_overlaps(validation: ValidationResult, thumbnails: dict) -> dict:
    """{(person, condition, recording): RecordingOverlap} of every recording, frames in frame/name order."""
    recordings: dict = {}
    for image, _ in validation.usable:
        recordings.setdefault((image.person, image.condition, image.recording), []).append(image)
    measured = {}
    for key, images in recordings.items():
        images.sort(key=lambda im: frame_order(im.frame, Path(im.rel_path).name))
        measured[key] = measure_overlap(features([thumbnails[im.rel_path] for im in images]))
    return measured


def _with_positions(rows: list) -> list:
    """Rows (sorted by recording, then frame order) with each frame's index within its recording."""
    out, last, position = [], None, 0
    for row in rows:
        key = (row["person"], row["condition"], row["recording"])
        position = position + 1 if key == last else 0
        out.append(dict(row, position=position))
        last = key
    return out


def overlap_summary_text(overlaps: dict, gap_frames: int, reports: list) -> str:
    measurable = [o for o in overlaps.values() if o.pairs > 0]
    if not measurable:
        return "Frame overlap: every recording has a single frame; nothing to measure."
    overlapping = [o for o in measurable if o.overlapping_frames > 0]
    lines = [f"Frame overlap, measured from the images ({len(measurable)} recordings with 2+ frames):"]
    if overlapping:
        shares = sorted(o.overlap_fraction for o in overlapping)
        frames = sorted(o.overlapping_frames for o in overlapping)
        lines.append(f"  {len(overlapping)} recording(s): consecutive frames share {shares[len(shares) // 2]:.1%} of "
                     f"their time span (median; {shares[0]:.1%}-{shares[-1]:.1%}), so a frame overlaps its next "
                     f"{frames[len(frames) // 2]} ({frames[0]}-{frames[-1]}).")
    if len(overlapping) < len(measurable):
        lines.append(f"  {len(measurable) - len(overlapping)} recording(s): consecutive frames do not overlap "
                     f"(independent snapshots, or frame numbers that do not follow time).")
    block_cells = [r for r in reports if r.method == "blocks"]
    if not block_cells:
        lines.append("  No recording was cut (whole recordings per split): no gap needed.")
    else:
        left_out = sum(n for r in block_cells for n in r.gaps.values())
        lines.append(f"  {len(block_cells)} person/condition cell(s) cut into blocks; each cut inside a recording "
                     f"leaves out the frames that overlap across it (at least --gap_frames {gap_frames}): "
                     f"{left_out} gap frame(s) in all; per recording in {SUMMARY_JSON}.")
    return "\n".join(lines)


def leak_summary_text(report: LeakReport) -> str:
    baseline = report.baseline
    rule = f"{1 - MATCH_CORRELATION:.2f}, the most a shifted copy scores"
    if baseline.get("p5") is not None:
        rule += (f", and a quarter of the 5th percentile ({baseline['p5']:.3f}) of nearest distances between "
                 f"{baseline['between']}")
    head = (f"Content leak check: {report.checked} val/test frame(s) aligned with the training frames of the same "
            f"person; a probable leak is closer than {report.threshold:.3f} (1 - correlation; the smaller of {rule})")
    if not report.leaks:
        return head + ". Probable leaks: none."
    groups = report.groups()
    lines = [head + f". WARNING: {len(report.leaks)} probable leak(s) (all in {SUMMARY_JSON}):"]
    lines.extend(f"  {line}" for line in groups[:MAX_LEAK_LINES])
    if len(groups) > MAX_LEAK_LINES:
        lines.append(f"  ... {len(groups) - MAX_LEAK_LINES} more in {SUMMARY_JSON}")
    return "\n".join(lines)


def split_summary_json(rows: list, reports: list, overlaps: dict, leak_report: LeakReport, settings: dict,
                       gap_frames: int) -> dict:
    cut = {(r.person, r.condition, rec): n for r in reports for rec, n in r.gaps.items()}
    return {
        "format": SUMMARY_FORMAT,
        "settings": settings,
        "counts": {s: sum(1 for r in rows if r["split"] == s) for s in (*SPLITS, GAP)},
        "cells": [{"person": r.person, "condition": r.condition, "images": r.images, "recordings": r.recordings,
                   "method": r.method, "counts": r.counts, "note": r.note} for r in reports],
        "overlap": [{"person": p, "condition": c, "recording": rec, **o.to_dict(),
                     "gap_at_a_cut": max(gap_frames, o.overlapping_frames),
                     "gap_frames_left_out": cut.get((p, c, rec), 0)}
                    for (p, c, rec), o in overlaps.items()],
        "leak_check": leak_report.to_dict(),
    }


def _build_rows(validation: ValidationResult, person_names: list, condition_names: list, *, seed: int,
                val_fraction: float, test_fraction: float, gap_frames: int, gaps: dict, split_unit: str,
                min_recordings: Optional[int], withholding: Optional[Withholding] = None):
    person_id = {p: i for i, p in enumerate(person_names)}
    condition_id = {c: i for i, c in enumerate(condition_names)}
    cells: dict = {}
    items = {}
    ordered = sorted(validation.usable, key=lambda ic: (person_id[ic[0].person], condition_id[ic[0].condition]))
    withheld = {}  # rel_path -> role: a withheld pair's images all go to its split, whole
    for image, check in ordered:
        items[image.rel_path] = (image, check)
        role = withholding.role(image.person, image.condition) if withholding is not None else ""
        if role:
            withheld[image.rel_path] = role
            continue
        cells.setdefault((image.person, image.condition), []).append(
            SplitUnit(key=image.rel_path, recording=image.recording,
                      order=frame_order(image.frame, Path(image.rel_path).name)))
    assignments, reports = split_cells(cells, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                       gap_frames=gap_frames, gaps=gaps, split_unit=split_unit,
                                       min_recordings=min_recordings)
    rows = []
    for image, check in (items[k] for k in items):
        role = withheld.get(image.rel_path, "")
        a = Assignment(role, image.recording) if role else assignments[image.rel_path]
        rows.append({
            "path": image.rel_path, "person_id": person_id[image.person], "person": image.person,
            "condition_id": condition_id[image.condition], "condition": image.condition,
            "recording": image.recording, "frame": image.frame, "group": a.group, "split": a.split,
            "sha256": check.sha256, "width": check.width, "height": check.height, "withheld": role,
            "order": frame_order(image.frame, Path(image.rel_path).name),
        })
    rows.sort(key=lambda r: (r["person_id"], r["condition_id"], natural_key(r["recording"]), r["order"]))
    return rows, reports


def _refuse_overwrite(manifest_path: Path, new_text: str, new_settings: dict) -> None:
    old_labels_file = manifest_path.parent / LABELS_FILE
    try:
        old = json.loads(old_labels_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        old = {}
    differences = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in new_settings.items()
                   if key in old and old.get(key) != value]
    if not differences:
        differences = ["the images, their content or the split differ"]
    raise ManifestExistsError(
        f"{manifest_path} already exists and was made from other inputs or settings ({'; '.join(differences)}). "
        "Later stages (VA-VAE, latent cache, DiT, evaluation) depend on that split, so it is not replaced "
        "silently. Pass --overwrite to replace it (and redo the later stages), or choose another --output_dir.")


def prepare_dataset(data_root: Union[str, Path], output_dir: Union[str, Path, None] = None, *, seed: int = 0,
                    val_fraction: float = 0.15, test_fraction: float = 0.15,
                    gap_frames: int = DEFAULT_GAP_FRAMES, split_unit: str = "auto",
                    min_recordings: Optional[int] = None, strict: bool = False,
                    min_side: int = 32, max_side: int = 4096, overwrite: bool = False, withhold: Optional[str] = None,
                    workers: Optional[int] = None, log: Optional[Callable[[str], None]] = print) -> Path:
    """Scan, validate and split ``data_root`` once; write the manifest into ``output_dir``; return its path.

    ``split_unit``: auto, recording or block (splits.py); ``gap_frames``: minimum frames left out at a cut
    inside a recording (the overlap measured from the images decides above it); ``strict``: stop when the
    content check finds a probable leak; ``withhold``: "CONDITION[:FRACTION]" (withhold.py).
    Raises UnknownLayoutError, NoUsableImagesError (a person has no usable image), OutputInsideDataError,
    ManifestExistsError (a different manifest is already there and ``overwrite`` is False), SplitLeakError.
    """
    log = log or (lambda _msg: None)
    check_fractions(val_fraction, test_fraction)
    check_split_unit(split_unit)
    withhold_spec = WithholdSpec.parse(withhold)
    if gap_frames < 0:
        raise ValueError(f"gap_frames must be >= 0, got {gap_frames}")
    data_root = Path(data_root).expanduser().resolve()
    output_dir = Path(output_dir if output_dir is not None else default_output_dir()).expanduser().resolve()
    _refuse_output_inside(data_root, output_dir)

    scan = scan_dataset(data_root)
    log(f"Data folder {data_root}: layout {scan.layout}, {len(scan.persons)} people, {len(scan.images)} image "
        f"files" + (f", ignored non-image files: {dict(scan.ignored_files)}" if scan.ignored_files else ""))
    for note in scan.notes:
        log(f"  note: {note}")
    validation = add_scan_problems(validate_images(scan.images, min_side=min_side, max_side=max_side,
                                                   workers=workers), scan)
    log(problems_summary(validation))
    _check_every_person_has_images(scan, validation)

    person_names = list(scan.persons)
    used_conditions = {image.condition for image, _ in validation.usable}
    condition_names = [c for c in scan.conditions if c in used_conditions]
    withholding = None
    if withhold_spec is not None:
        conditions_of_person: dict = {}
        for image, _ in validation.usable:
            conditions_of_person.setdefault(image.person, set()).add(image.condition)
        withholding = choose_withheld(withhold_spec, conditions_of_person, condition_names, seed=seed)
        log(f"Withheld ({withholding.spec}): {', '.join(withholding.conditions)} of "
            f"{', '.join(withholding.test_people)} -> test only; of {', '.join(withholding.val_people) or 'nobody'} "
            f"-> validation only.")
    started = time.perf_counter()
    thumbnails = dict(zip((im.rel_path for im, _ in validation.usable),
                          load_thumbnails([im.path for im, _ in validation.usable], workers=workers)))
    overlaps = measure_overlaps(validation, thumbnails)
    gaps = {key: o.overlapping_frames for key, o in overlaps.items()}
    rows, reports = _build_rows(validation, person_names, condition_names, seed=seed, val_fraction=val_fraction,
                                test_fraction=test_fraction, gap_frames=gap_frames, gaps=gaps,
                                split_unit=split_unit, min_recordings=min_recordings, withholding=withholding)
    leaks = find_leaks(rows, gap_frames, gaps)
    if leaks:  # a bug in splits.py, never the user's data: stop before anything is written
        raise RuntimeError("The split leaks (please report this): " + "; ".join(leaks[:5]))
    leak_report = check_leaks(_with_positions(rows), thumbnails, {key: o.hop_columns for key, o in overlaps.items()})
    del thumbnails
    overlap_text = overlap_summary_text(overlaps, gap_frames, reports)
    leak_text = leak_summary_text(leak_report)
    log(f"Measured the frame overlap and checked the split by content in {time.perf_counter() - started:.1f} s.")
    if strict and leak_report.leaks:
        raise SplitLeakError(
            f"--strict: the split of {data_root} has {len(leak_report.leaks)} val/test frame(s) with a near copy "
            f"in training.\n{leak_text}\nNothing was written. Fix the data as suggested, or rerun without "
            f"--strict to write the split with the full list in {output_dir / SUMMARY_JSON}.")
    manifest_text = render_manifest_csv(rows)

    settings = {"data_root": str(data_root), "seed": int(seed), "val_fraction": float(val_fraction),
                "test_fraction": float(test_fraction), "gap_frames": int(gap_frames), "split_unit": split_unit,
                "min_recordings": min_recordings, "min_side": int(min_side), "max_side": int(max_side),
                "withhold": withholding.spec if withholding is not None else None}
    manifest_path = output_dir / MANIFEST_FILE
    if manifest_path.is_file() and not overwrite:
        if manifest_path.read_text(encoding="utf-8") != manifest_text:
            _refuse_overwrite(manifest_path, manifest_text, settings)
        log(f"{manifest_path} already holds this exact split; keeping it.")

    counts = Counter(r["split"] for r in rows)
    per_person = {p: {s: 0 for s in (*SPLITS, GAP)} for p in person_names}
    for r in rows:
        per_person[r["person"]][r["split"]] += 1
    labels = {
        "format": MANIFEST_FORMAT,
        **settings,
        "layout": scan.layout,
        "person_names": person_names,
        "persons": {p: i for i, p in enumerate(person_names)},
        "condition_names": condition_names,
        "conditions": {c: i for i, c in enumerate(condition_names)},
        "num_persons": len(person_names),
        "num_conditions": len(condition_names),
        "counts": {s: counts.get(s, 0) for s in (*SPLITS, GAP)},
        "counts_per_person": per_person,
        "skipped_files": len(validation.skipped_paths()),
        "problems": validation.counts(),
        "manifest_sha256": sha256_text(manifest_text),
        "split_rules": SPLIT_RULES,
        "withheld": withholding.to_dict() if withholding is not None else None,
    }
    summary = "\n".join([split_summary_text(rows, reports, person_names, condition_names, val_fraction,
                                            test_fraction), overlap_text, leak_text])
    summary_json = split_summary_json(rows, reports, overlaps, leak_report, settings, gap_frames)
    if withholding is not None:
        summary_json["withheld"] = {**withholding.to_dict(), "images": Counter(r["withheld"] for r in rows
                                                                               if r["withheld"])}
        summary += (f"\nWithheld ({withholding.spec}): {'/'.join(withholding.conditions)} of "
                    f"{', '.join(withholding.test_people)} in test only, of {', '.join(withholding.val_people) or '-'} "
                    f"in validation only; no training stage sees them.")

    # manifest.csv last: its presence means the whole set was written.
    write_text_atomic(output_dir / PROBLEMS_JSON,
                      json.dumps([p.to_dict() for p in validation.problems], indent=2) + "\n")
    write_text_atomic(output_dir / PROBLEMS_CSV, _problems_csv(validation))
    write_text_atomic(output_dir / SUMMARY_FILE, summary + "\n")
    write_text_atomic(output_dir / SUMMARY_JSON, json.dumps(summary_json, indent=2) + "\n")
    write_text_atomic(output_dir / LABELS_FILE, json.dumps(labels, indent=2) + "\n")
    write_text_atomic(manifest_path, manifest_text)
    log(summary)
    log(f"Wrote {manifest_path} ({len(rows)} rows), {output_dir / LABELS_FILE}, {output_dir / PROBLEMS_CSV}, "
        f"{output_dir / SUMMARY_JSON}")
    return manifest_path
