"""Leak-free train/val/test split, made once per dataset.

Frames of one recording overlap in time, so neighbouring frames are near-duplicates: a per-image random
split would put copies of test images into training. The split therefore works on *groups*:

* It is stratified by (person, condition) "cells", so every person — and every walking condition of that
  person — gets val and test images when it has enough data (cross-condition evaluation needs that).
* ``split_unit="auto"`` (default): a cell with at least ``min_recordings`` recordings (default: one per
  split) is split by whole recordings, even when the fractions come out far off (3 recordings: a third
  each; the note says so): no recording is in two splits. Several seeded shuffles are tried and the one
  whose image counts are closest to the requested fractions wins; each requested split gets at least one
  recording. A cell with fewer recordings (or file names that carry none: then its frames in frame/name
  order form one pseudo-recording) is cut into one contiguous block per split.
* ``split_unit="recording"``: never cut a recording; a cell with fewer recordings than splits gives up
  val, then test. ``split_unit="block"``: every cell is cut into blocks (fractions as requested).
* Where a block cut falls inside a recording, the frames at the cut that still overlap the other side in
  time are left out of every split (split ``"gap"``): ``gaps`` gives that number per recording (measured
  from the images, overlap.py), ``gap_frames`` a minimum for all. A gap never reaches past the end of its
  recording. Block order is seeded; among the orders the one that needs the fewest gap frames is used.
* A cell too small to hold every split plus its gaps gives up val, then test (everything in train) and
  says so in the summary.

Everything is deterministic in (seed, person, condition): adding a person does not reshuffle the others.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Optional, Sequence

from .layouts import natural_key

SPLITS = ("train", "val", "test")
GAP = "gap"
SHUFFLE_TRIALS = 64
SPLIT_UNITS = ("auto", "recording", "block")


@dataclass(frozen=True)
class SplitUnit:
    """One image to be split: ``key`` is the caller's handle, ``order`` sorts frames within a recording."""

    key: Hashable
    recording: str
    order: tuple


@dataclass(frozen=True)
class Assignment:
    split: str  # train / val / test / gap
    group: str  # the unit that went to that split as a whole: a recording, or "<recording>@<split>" block


@dataclass
class CellReport:
    person: str
    condition: str
    images: int
    recordings: int
    method: str  # "recordings", "blocks" or "train_only"
    counts: dict = field(default_factory=dict)
    note: str = ""
    gaps: dict = field(default_factory=dict)  # recording -> frames left out at its cuts (block splits only)


def frame_order(frame: Optional[int], name: str) -> tuple:
    """Frames by number, then by natural file name (frames without a number after numbered ones)."""
    return (0 if frame is not None else 1, frame if frame is not None else 0, natural_key(name))


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave images for training, got "
                         f"{val_fraction} + {test_fraction} >= 1")


def _needed_splits(val_fraction: float, test_fraction: float) -> list[str]:
    return ["train"] + [s for s, f in (("val", val_fraction), ("test", test_fraction)) if f > 0]


def check_split_unit(split_unit: str) -> None:
    if split_unit not in SPLIT_UNITS:
        raise ValueError(f"split_unit must be one of {', '.join(SPLIT_UNITS)}, got {split_unit!r}")


def split_cell(units: Sequence[SplitUnit], *, val_fraction: float, test_fraction: float,
               gap_of: Callable[[str], int], rng: random.Random, split_unit: str = "auto",
               min_recordings: Optional[int] = None) -> tuple[dict, str, str]:
    """Assignments {key: Assignment} for one (person, condition) cell, the method used and a note.
    ``gap_of(recording)``: frames to leave out where a block cut falls inside that recording."""
    fractions = {"val": val_fraction, "test": test_fraction}
    needed = _needed_splits(val_fraction, test_fraction)
    by_recording: dict[str, list[SplitUnit]] = {}
    for unit in units:
        by_recording.setdefault(unit.recording, []).append(unit)
    recordings = sorted(by_recording, key=natural_key)
    for name in recordings:
        by_recording[name].sort(key=lambda u: u.order)
    if len(needed) == 1:
        return {u.key: Assignment("train", u.recording) for u in units}, "recordings", ""
    if split_unit == "recording":
        kept = list(needed)
        while len(kept) > len(recordings):
            kept.remove("val" if "val" in kept else "test")
        note = "" if kept == needed else (
            f"{len(recordings)} recording(s) for {len(needed)} splits and --split_unit recording: no "
            f"{' or '.join(s for s in needed if s not in kept)} (auto or block cuts recordings into blocks)")
        if len(kept) == 1:
            return {u.key: Assignment("train", u.recording) for u in units}, "train_only", note
        assignment, counts, targets = _split_by_recordings(by_recording, recordings, fractions, kept, rng)
        return assignment, "recordings", (note + " " + _fraction_note(counts, targets)).strip()
    min_recordings = len(needed) if min_recordings is None else max(int(min_recordings), len(needed))
    if split_unit == "auto" and len(recordings) >= min_recordings:
        assignment, counts, targets = _split_by_recordings(by_recording, recordings, fractions, needed, rng)
        return assignment, "recordings", _fraction_note(counts, targets)
    timeline = [u for name in recordings for u in by_recording[name]]
    assignment, method, note = _split_by_blocks(timeline, fractions, needed, gap_of, rng)
    if split_unit == "auto":
        note = (f"{len(recordings)} recording(s), fewer than {min_recordings}: cut into blocks. " + note).strip()
    return assignment, method, note


def _fraction_note(counts: dict, targets: dict) -> str:
    """Say so when whole recordings miss a held-out fraction by more than a factor of two."""
    if all(0.5 * t <= counts[s] <= 2.0 * t for s, t in targets.items()):
        return ""
    return ("whole recordings: " + ", ".join(f"{s} {counts[s]} images (target {t:.1f})" for s, t in targets.items())
            + "; kept so that no recording is cut (--split_unit block matches the fractions with gaps)")


def _split_by_recordings(by_recording, recordings, fractions, needed, rng) -> tuple[dict, dict, dict]:
    """({key: Assignment}, images per held-out split, target images per held-out split)."""
    sizes = {name: len(by_recording[name]) for name in recordings}
    total = sum(sizes.values())
    held_out = [s for s in ("test", "val") if s in needed]
    targets = {s: fractions[s] * total for s in held_out}
    best_cost, best = None, None
    for _ in range(SHUFFLE_TRIALS):
        order = list(recordings)
        rng.shuffle(order)
        chosen, start = {}, 0
        for i, split in enumerate(held_out):
            # Take a prefix of the remaining recordings whose size is closest to the target, keeping at least
            # one recording for each split still to fill (the later held-out ones and train).
            still_needed = len(held_out) - i  # this split's later siblings + train
            best_k, best_err, running = 1, None, 0
            for k in range(1, len(order) - start - still_needed + 1):
                running += sizes[order[start + k - 1]]
                err = abs(running - targets[split])
                if best_err is None or err < best_err:
                    best_k, best_err = k, err
            chosen[split] = order[start:start + best_k]
            start += best_k
        chosen["train"] = order[start:]
        cost = sum(abs(sum(sizes[r] for r in chosen[s]) - targets[s]) for s in held_out)
        if best_cost is None or cost < best_cost:
            best_cost, best = cost, chosen
    split_of = {name: split for split, names in best.items() for name in names}
    counts = {s: sum(sizes[r] for r in best[s]) for s in held_out}
    assignment = {u.key: Assignment(split_of[name], name) for name in recordings for u in by_recording[name]}
    return assignment, counts, targets


def _block_sizes(total: int, fractions: dict, needed: list[str], max_gap: int) -> Optional[dict]:
    """Sizes of the val/test blocks (train takes the rest), or None when the cell is too small."""
    worst_gaps = (len(needed) - 1) * max_gap
    # Fractions of the images that end up in a split (gap frames belong to none).
    sizes = {s: max(1, round(fractions[s] * (total - worst_gaps))) for s in needed if s != "train"}
    while sum(sizes.values()) + 1 + worst_gaps > total:
        largest = max(sizes, key=lambda s: sizes[s])
        if sizes[largest] == 1:
            return None
        sizes[largest] -= 1
    return sizes


def _layout(timeline: Sequence[SplitUnit], order: Sequence[str], sizes: dict,
            gap_of: Callable[[str], int]) -> list[str]:
    """Split label per timeline position for one block order: fixed-size blocks packed from both ends
    around train, a gap wherever a cut falls inside a recording."""
    n = len(timeline)
    labels = [""] * n
    t = order.index("train")

    def cut_gap(last: int, first: int, step: int) -> int:
        """Gap frames from ``first`` on (walking by ``step``) when a cut after ``last`` splits a recording:
        the recording's gap, but never past its end (the next recording does not overlap it)."""
        if not (0 <= last < n and 0 <= first < n) or timeline[last].recording != timeline[first].recording:
            return 0
        wanted, k = gap_of(timeline[first].recording), 0
        recording = timeline[last].recording
        while k < wanted and 0 <= first + k * step < n and timeline[first + k * step].recording == recording:
            k += 1
        return k

    pos = 0  # blocks before train, from the start
    for split in order[:t]:
        g = cut_gap(pos - 1, pos, 1)
        labels[pos:pos + g] = [GAP] * g
        pos += g
        labels[pos:pos + sizes[split]] = [split] * sizes[split]
        pos += sizes[split]
    end = n  # blocks after train, from the end
    for split in reversed(order[t + 1:]):
        g = cut_gap(end, end - 1, -1)
        labels[end - g:end] = [GAP] * g
        end -= g
        labels[end - sizes[split]:end] = [split] * sizes[split]
        end -= sizes[split]
    # train between them; its own cuts need gaps too
    g = cut_gap(pos - 1, pos, 1) if t > 0 else 0
    labels[pos:pos + g] = [GAP] * g
    pos += g
    g = cut_gap(end, end - 1, -1) if t < len(order) - 1 else 0
    labels[max(end - g, pos):end] = [GAP] * (end - max(end - g, pos))
    end = max(end - g, pos)
    labels[pos:end] = ["train"] * (end - pos)
    return labels


def _split_by_blocks(timeline, fractions, needed, gap_of, rng) -> tuple[dict, str, str]:
    total = len(timeline)
    max_gap = max(gap_of(r) for r in {u.recording for u in timeline})
    note = ""
    sizes = _block_sizes(total, fractions, needed, max_gap)
    while sizes is None and len(needed) > 1:
        dropped = "val" if "val" in needed else "test"
        needed = [s for s in needed if s != dropped]
        note += f"too few images ({total}) for a {dropped} block plus {max_gap}-frame gaps: no {dropped}. "
        sizes = _block_sizes(total, fractions, needed, max_gap) if len(needed) > 1 else {}
    if len(needed) == 1:
        return ({u.key: Assignment("train", f"{u.recording}@train") for u in timeline}, "train_only",
                note.strip())
    orders = list(itertools.permutations(needed))
    rng.shuffle(orders)
    layouts = [_layout(timeline, order, sizes, gap_of) for order in orders]
    best = min(layouts, key=lambda labels: labels.count(GAP))  # first of the shuffled orders wins ties
    return ({u.key: Assignment(label, f"{u.recording}@{label}") for u, label in zip(timeline, best)},
            "blocks", note.strip())


def _gap_lookup(gap_frames: int, gaps: Optional[Mapping]) -> Callable[[tuple], int]:
    """(person, condition, recording) -> frames to leave out at a cut: the measured gap, at least gap_frames."""
    if gap_frames < 0:
        raise ValueError(f"gap_frames must be >= 0, got {gap_frames}")
    return lambda key: max(int(gap_frames), int((gaps or {}).get(key, 0)))


def split_cells(cells: dict, *, seed: int, val_fraction: float, test_fraction: float, gap_frames: int = 0,
                gaps: Optional[Mapping] = None, split_unit: str = "auto",
                min_recordings: Optional[int] = None) -> tuple[dict, list[CellReport]]:
    """Split every cell. ``cells``: {(person, condition): [SplitUnit]} -> ({key: Assignment}, reports).
    ``gaps``: {(person, condition, recording): frames that overlap in time}; ``gap_frames``: minimum gap."""
    check_fractions(val_fraction, test_fraction)
    check_split_unit(split_unit)
    gap_for = _gap_lookup(gap_frames, gaps)
    assignments: dict = {}
    reports: list[CellReport] = []
    for (person, condition), units in cells.items():
        rng = random.Random(f"{seed}|{person}|{condition}")  # str seeds hash with sha512: stable across runs
        cell, method, note = split_cell(units, val_fraction=val_fraction, test_fraction=test_fraction,
                                        gap_of=lambda r, cell=(person, condition): gap_for((*cell, r)), rng=rng,
                                        split_unit=split_unit, min_recordings=min_recordings)
        assignments.update(cell)
        counts = {s: 0 for s in (*SPLITS, GAP)}
        cut_gaps: dict = {}
        for unit in units:
            counts[cell[unit.key].split] += 1
            if cell[unit.key].split == GAP:
                cut_gaps[unit.recording] = cut_gaps.get(unit.recording, 0) + 1
        reports.append(CellReport(person=person, condition=condition, images=len(units),
                                  recordings=len({u.recording for u in units}), method=method, counts=counts,
                                  note=note, gaps=cut_gaps))
    return assignments, reports


def find_leaks(rows: Sequence[dict], gap_frames: int = 0, gaps: Optional[Mapping] = None) -> list[str]:
    """Leaks in a finished split by name and frame order (empty list: none). ``rows`` need person,
    condition, recording, split, group and an ``order`` key. Checks: every group lies in one split, and
    within a recording two frames of different splits are at least its gap apart (``gaps`` per
    (person, condition, recording), at least ``gap_frames``). leak_check.py looks at the content."""
    gap_for = _gap_lookup(gap_frames, gaps)
    problems = []
    split_of_group: dict = {}
    sequences: dict = {}
    for row in rows:
        if row["split"] == GAP:
            continue
        key = (row["person"], row["condition"], row["group"])
        if split_of_group.setdefault(key, row["split"]) != row["split"]:
            problems.append(f"group {key} is in {split_of_group[key]} and {row['split']}")
    for row in rows:
        sequences.setdefault((row["person"], row["condition"], row["recording"]), []).append(row)
    for key, seq in sequences.items():
        seq = sorted(seq, key=lambda r: r["order"])
        gap = gap_for(key)
        last_split, last_index = None, None
        for i, row in enumerate(seq):
            if row["split"] == GAP:
                continue
            if last_split is not None and row["split"] != last_split and i - last_index - 1 < gap:
                problems.append(f"recording {key}: a {last_split} and a {row['split']} frame are only "
                                f"{i - last_index - 1} frame(s) apart (gap {gap})")
            last_split, last_index = row["split"], i
    return problems
