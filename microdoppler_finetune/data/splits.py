"""Leak-free train/val/test split, made once per dataset.

Frames of one recording overlap in time, so neighbouring frames are near-duplicates: a per-image random
split would put copies of test images into training. The split therefore works on *groups*:

* It is stratified by (person, condition) "cells", so every person — and every walking condition of that
  person — gets val and test images when it has enough data (cross-condition evaluation needs that).
* A cell with at least ``min_recordings`` recordings (default: one per split) is split by whole recordings:
  no recording is in two splits. Several seeded shuffles are tried and the one whose image counts are
  closest to the requested fractions wins; each requested split gets at least one recording. If even the
  best one misses a held-out fraction by more than a factor of two (e.g. 3 equal recordings: 33% each
  instead of 15%) and by more than the frames the gaps below would cost, the cell is cut into blocks.
* A cell with fewer recordings (or file names that carry none: then its frames in frame/name order form
  one pseudo-recording) is cut into one contiguous block per split. Where a cut falls inside a recording,
  ``gap_frames`` frames at the cut are left out of every split (split ``"gap"``) so the overlapping
  neighbours of a val/test frame are never trained on. Block order is seeded; among the orders the one
  that needs the fewest gaps is used.
* A cell too small to hold every split plus its gaps gives up val, then test (everything in train) and
  says so in the summary.

Everything is deterministic in (seed, person, condition): adding a person does not reshuffle the others.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

from .layouts import natural_key

SPLITS = ("train", "val", "test")
GAP = "gap"
SHUFFLE_TRIALS = 64


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


def split_cell(units: Sequence[SplitUnit], *, val_fraction: float, test_fraction: float, gap_frames: int,
               rng: random.Random, min_recordings: Optional[int] = None) -> tuple[dict, str, str]:
    """Assignments {key: Assignment} for one (person, condition) cell, the method used and a note."""
    fractions = {"val": val_fraction, "test": test_fraction}
    needed = _needed_splits(val_fraction, test_fraction)
    by_recording: dict[str, list[SplitUnit]] = {}
    for unit in units:
        by_recording.setdefault(unit.recording, []).append(unit)
    recordings = sorted(by_recording, key=natural_key)
    for name in recordings:
        by_recording[name].sort(key=lambda u: u.order)
    min_recordings = len(needed) if min_recordings is None else max(int(min_recordings), len(needed))
    if len(needed) == 1:
        return {u.key: Assignment("train", u.recording) for u in units}, "recordings", ""
    note = ""
    if len(recordings) >= min_recordings:
        assignment, counts, targets = _split_by_recordings(by_recording, recordings, fractions, needed, rng)
        if _close_enough(counts, targets, gap_frames):
            return assignment, "recordings", ""
        note = ("whole recordings would give " + ", ".join(f"{s} {counts[s]} (target {targets[s]:.1f})"
                                                           for s in targets) + "; cut into blocks instead. ")
    timeline = [u for name in recordings for u in by_recording[name]]
    assignment, method, block_note = _split_by_blocks(timeline, fractions, needed, gap_frames, rng)
    return assignment, method, (note + block_note).strip()


def _close_enough(counts: dict, targets: dict, gap_frames: int) -> bool:
    """Whole recordings are kept unless a held-out split misses its target by more than a factor of two AND
    by more than the frames a block split would lose to its gaps (so small cells keep whole recordings)."""
    for split, target in targets.items():
        miss = abs(counts[split] - target)
        if not (0.5 * target <= counts[split] <= 2.0 * target) and miss > 2 * gap_frames + 1:
            return False
    return True


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


def _block_sizes(total: int, fractions: dict, needed: list[str], gap_frames: int) -> Optional[dict]:
    """Sizes of the val/test blocks (train takes the rest), or None when the cell is too small."""
    worst_gaps = (len(needed) - 1) * gap_frames
    # Fractions of the images that end up in a split (gap frames belong to none).
    sizes = {s: max(1, round(fractions[s] * (total - worst_gaps))) for s in needed if s != "train"}
    while sum(sizes.values()) + 1 + worst_gaps > total:
        largest = max(sizes, key=lambda s: sizes[s])
        if sizes[largest] == 1:
            return None
        sizes[largest] -= 1
    return sizes


def _layout(timeline: Sequence[SplitUnit], order: Sequence[str], sizes: dict, gap_frames: int) -> list[str]:
    """Split label per timeline position for one block order: fixed-size blocks packed from both ends
    around train, a gap wherever a cut falls inside a recording."""
    n = len(timeline)
    labels = [""] * n
    t = order.index("train")

    def same_recording(i: int, j: int) -> bool:
        return 0 <= i < n and 0 <= j < n and timeline[i].recording == timeline[j].recording

    pos = 0  # blocks before train, from the start
    for split in order[:t]:
        if pos > 0 and same_recording(pos - 1, pos):
            for i in range(pos, min(pos + gap_frames, n)):
                labels[i] = GAP
            pos += gap_frames
        for i in range(pos, pos + sizes[split]):
            labels[i] = split
        pos += sizes[split]
    end = n  # blocks after train, from the end
    for split in reversed(order[t + 1:]):
        if end < n and same_recording(end - 1, end):
            for i in range(max(end - gap_frames, 0), end):
                labels[i] = GAP
            end -= gap_frames
        for i in range(end - sizes[split], end):
            labels[i] = split
        end -= sizes[split]
    # train between them; its own cuts need gaps too
    if t > 0 and pos < n and same_recording(pos - 1, pos):
        for i in range(pos, min(pos + gap_frames, end)):
            labels[i] = GAP
        pos += gap_frames
    if t < len(order) - 1 and end > 0 and same_recording(end - 1, end):
        for i in range(max(end - gap_frames, pos), end):
            labels[i] = GAP
        end -= gap_frames
    for i in range(pos, end):
        labels[i] = "train"
    return labels


def _split_by_blocks(timeline, fractions, needed, gap_frames, rng) -> tuple[dict, str, str]:
    total = len(timeline)
    note = ""
    sizes = _block_sizes(total, fractions, needed, gap_frames)
    while sizes is None and len(needed) > 1:
        dropped = "val" if "val" in needed else "test"
        needed = [s for s in needed if s != dropped]
        note += f"too few images ({total}) for a {dropped} block plus {gap_frames}-frame gaps: no {dropped}. "
        sizes = _block_sizes(total, fractions, needed, gap_frames) if len(needed) > 1 else {}
    if len(needed) == 1:
        return ({u.key: Assignment("train", f"{u.recording}@train") for u in timeline}, "train_only",
                note.strip())
    orders = list(itertools.permutations(needed))
    rng.shuffle(orders)
    layouts = [_layout(timeline, order, sizes, gap_frames) for order in orders]
    best = min(layouts, key=lambda labels: labels.count(GAP))  # first of the shuffled orders wins ties
    return ({u.key: Assignment(label, f"{u.recording}@{label}") for u, label in zip(timeline, best)},
            "blocks", note.strip())


def split_cells(cells: dict, *, seed: int, val_fraction: float, test_fraction: float, gap_frames: int,
                min_recordings: Optional[int] = None) -> tuple[dict, list[CellReport]]:
    """Split every cell. ``cells``: {(person, condition): [SplitUnit]} -> ({key: Assignment}, reports)."""
    check_fractions(val_fraction, test_fraction)
    if gap_frames < 0:
        raise ValueError(f"gap_frames must be >= 0, got {gap_frames}")
    assignments: dict = {}
    reports: list[CellReport] = []
    for (person, condition), units in cells.items():
        rng = random.Random(f"{seed}|{person}|{condition}")  # str seeds hash with sha512: stable across runs
        cell, method, note = split_cell(units, val_fraction=val_fraction, test_fraction=test_fraction,
                                        gap_frames=gap_frames, rng=rng, min_recordings=min_recordings)
        assignments.update(cell)
        counts = {s: 0 for s in (*SPLITS, GAP)}
        for a in cell.values():
            counts[a.split] += 1
        reports.append(CellReport(person=person, condition=condition, images=len(units),
                                  recordings=len({u.recording for u in units}), method=method, counts=counts,
                                  note=note))
    return assignments, reports


def find_leaks(rows: Sequence[dict], gap_frames: int) -> list[str]:
    """Leaks in a finished split (empty list: none). ``rows`` need person, condition, recording, split,
    group and an ``order`` key. Checks: every group lies in one split, and within a recording two frames of
    different splits are at least ``gap_frames`` frames apart."""
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
        last_split, last_index = None, None
        for i, row in enumerate(seq):
            if row["split"] == GAP:
                continue
            if last_split is not None and row["split"] != last_split and i - last_index - 1 < gap_frames:
                problems.append(f"recording {key}: a {last_split} and a {row['split']} frame are only "
                                f"{i - last_index - 1} frame(s) apart (gap {gap_frames})")
            last_split, last_index = row["split"], i
    return problems
