"""After the split: does any val/test frame have a near copy among the training frames? Judged by content.

Names cannot show every leak: a recording exported twice under two names, frames whose numbers do not follow
time, an overlap larger than the gap at a cut. So each checked val/test frame is aligned (overlap.align, at
time shifts up to half a frame) with every training frame of the same person. A training frame is a
probable copy when it is closer than

* frames of two different recordings of the same person usually are (a quarter of the 5th percentile of
  their nearest distances: the baseline, measured on the same data, leaving out a recording saved twice), and
* what the overlap measurement calls a shifted copy (correlation >= MATCH_CORRELATION),

and, when both frames come from one recording whose overlap was measured, when the shift that aligns them
is the one their frame numbers imply (frame distance x measured hop): a walk looks much the same one stride
later, and such a match at another shift is that, not a copy.

Distance = 1 - best correlation of the shared columns (0: identical content).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .overlap import MATCH_CORRELATION, THUMB_COLS, align, features, single_threaded_blas

MAX_QUERIES_PER_PERSON = 64  # val/test frames checked per person (frames of cut recordings first)
BASELINE_PER_PERSON = 16  # frames per person whose nearest frame of another recording sets the baseline
BASELINE_PERCENTILE = 5.0
# A copy is closer than this share of that percentile. Half of it still caught 0.4 % of the frames of
# simulated walkers, whose recordings are more alike than real ones; copies stay far below a quarter.
BASELINE_FACTOR = 0.25
# Two recordings whose frames have a match in the other at a median distance under this are one recording
# saved twice (JPEG re-encoding keeps copies under 0.01; different recordings of one simulated walker, the
# most alike we know, stay above 0.08).
DUPLICATE_DISTANCE = 0.03
# Shifts up to half a frame: frames sharing at least half their time span. Smaller shared parts match by
# chance too often to call a copy.
MAX_SHIFT = THUMB_COLS // 2
SHIFT_TOLERANCE = 1.5  # columns between the shift found and the one frame numbers imply (hop error, JPEG)
CHUNK = 16  # queries aligned at once (bounds memory: CHUNK x candidates x shifts)


@dataclass
class LeakReport:
    checked: int = 0
    threshold: Optional[float] = None
    baseline: dict = field(default_factory=dict)
    leaks: list = field(default_factory=list)  # one dict per val/test frame with a near copy in training

    def groups(self) -> list:
        """Leaks grouped by (val/test recording, training recording): one line each for the console."""
        grouped: dict = defaultdict(list)
        for leak in self.leaks:
            grouped[(leak["person"], leak["recording"], leak["split"], leak["train_recording"])].append(leak)
        lines = []
        for (person, recording, split, train_recording), items in grouped.items():
            if recording == train_recording:
                why = ("frames of this recording on both sides of a cut overlap in time; raise --gap_frames or "
                       "use --split_unit recording")
            else:
                why = ("a different recording with the same content: the same recording exported twice? Remove "
                       "one copy from the data folder")
            lines.append(f"{person} {recording} ({split}, {len(items)} frame(s), e.g. {items[0]['path']}) ~ "
                         f"training {train_recording} (e.g. {items[0]['train_path']}, distance "
                         f"{min(i['distance'] for i in items):.3f}): {why}")
        return lines

    def to_dict(self) -> dict:
        return {"checked_frames": self.checked, "threshold_distance": self.threshold, "baseline": self.baseline,
                "max_shift_fraction": MAX_SHIFT / THUMB_COLS, "probable_leaks": self.leaks,
                "groups": self.groups()}


def _recording_id(row: dict) -> str:
    return f"{row['condition']}/{row['recording']}" if row["recording"] else f"{row['condition']}/(unnamed)"


def _spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def _best(query_features, candidate_features, expected=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: best correlation over the candidates, that candidate's index and the shift. ``expected``
    (queries, candidates): the shift a copy must have, NaN where any shift will do."""
    best_corr, best_index, best_shift = [], [], []
    for start in range(0, len(query_features.spectra), CHUNK):
        corr, shift = align(query_features[start:start + CHUNK], candidate_features, max_shift=MAX_SHIFT)
        if expected is not None:
            want = expected[start:start + CHUNK]
            corr = np.where(np.isnan(want) | (np.abs(shift - want) <= SHIFT_TOLERANCE), corr, -np.inf)
        index = corr.argmax(axis=1)
        rows = np.arange(len(index))
        best_corr.append(corr[rows, index])
        best_index.append(index)
        best_shift.append(shift[rows, index])
    return np.concatenate(best_corr), np.concatenate(best_index), np.concatenate(best_shift)


def _baseline(people: dict, candidates: dict, probes: dict) -> tuple[list, dict]:
    """Nearest distances between frames of different recordings of one person (else: of different people),
    and what they were measured between. ``candidates``: person -> phase-0 features of all its frames;
    ``probes``: person -> (sampled frame indices, their features with every phase). Two recordings that are
    one recording saved twice (DUPLICATE_DISTANCE) are left out, or they would hide themselves."""
    distances, copies = [], set()
    for person, rows in people.items():
        recording = np.array([_recording_id(r) for r in rows])
        names = sorted(set(recording))
        if len(names) < 2:
            continue
        sample, sample_features = probes[person]
        corr = np.concatenate([align(sample_features[i:i + CHUNK], candidates[person], MAX_SHIFT)[0]
                               for i in range(0, len(sample), CHUNK)])
        # nearest distance of each sampled frame to each recording: (samples, recordings)
        nearest = np.stack([1.0 - corr[:, recording == name].max(axis=1) for name in names], axis=1)
        own = np.array([names.index(recording[i]) for i in sample])
        nearest[np.arange(len(sample)), own] = np.inf
        for a in range(len(names)):
            for b in range(len(names)):
                frames_of_a = own == a
                if a != b and frames_of_a.any() and np.median(nearest[frames_of_a, b]) < DUPLICATE_DISTANCE:
                    nearest[frames_of_a, b] = np.inf
                    copies.add(f"{person}: " + " = ".join(sorted((names[a], names[b]))))
        best = nearest.min(axis=1)
        distances.extend(best[np.isfinite(best)].tolist())
    info = {"between": "different recordings of the same person", "copies_left_out": sorted(copies)}
    if distances:
        return distances, info
    names = list(people)
    for person, other in zip(names, names[1:]):
        corr, _, _ = _best(probes[person][1], candidates[other])
        distances.extend((1.0 - corr).tolist())
    return distances, {"between": "different people (no person has two recordings)"}


def _queries(person_rows: list) -> list:
    """Indices of the val/test frames to check: every frame of a recording that also has training frames
    (where overlap leaks), then others spread evenly, MAX_QUERIES_PER_PERSON in all."""
    held_out = [i for i, r in enumerate(person_rows) if r["split"] in ("val", "test")]
    cut = {_recording_id(r) for r in person_rows if r["split"] == "train"}
    risky = [i for i in held_out if _recording_id(person_rows[i]) in cut]
    rest = [i for i in held_out if _recording_id(person_rows[i]) not in cut]
    queries = risky[:MAX_QUERIES_PER_PERSON]
    return queries + _spread(rest, MAX_QUERIES_PER_PERSON - len(queries))


def check_leaks(rows: Sequence[dict], thumbnails: dict, hops: Optional[dict] = None) -> LeakReport:
    """Probable leaks in a finished split. ``rows``: path, person, condition, recording, split, and
    ``position`` (frame index in frame order within its recording); ``thumbnails``: path ->
    overlap.load_thumbnail; ``hops``: (person, condition, recording) -> RecordingOverlap.hop_columns (the
    shift from one frame to the next; None or missing: the frames do not overlap)."""
    with single_threaded_blas():
        return _check_leaks(rows, thumbnails, hops or {})


def _check_leaks(rows: Sequence[dict], thumbnails: dict, hops: dict) -> LeakReport:
    people: dict = defaultdict(list)
    for row in rows:
        if row["split"] != "gap":
            people[row["person"]].append(row)
    # Every frame is a candidate (phase 0 suffices); only the probed frames need every sub-column phase.
    candidates, probes = {}, {}
    for person, person_rows in people.items():
        candidates[person] = features([thumbnails[r["path"]] for r in person_rows], phases=False)
        sample = _spread(list(range(len(person_rows))), BASELINE_PER_PERSON)
        probes[person] = (sample, features([thumbnails[person_rows[i]["path"]] for i in sample]))
    report = LeakReport()
    distances, info = _baseline(people, candidates, probes)
    report.threshold = 1.0 - MATCH_CORRELATION
    report.baseline = dict(info, samples=len(distances))
    if distances:
        p5 = float(np.percentile(distances, BASELINE_PERCENTILE))
        report.threshold = round(min(report.threshold, BASELINE_FACTOR * p5), 4)
        report.baseline.update(p5=round(p5, 4), median=round(float(np.median(distances)), 4))
    for person, person_rows in people.items():
        train = [i for i, r in enumerate(person_rows) if r["split"] == "train"]
        queries = _queries(person_rows)
        if not train or not queries:
            continue
        # Within a measured recording a copy sits at the shift its frame numbers imply (NaN: no expectation).
        recording = np.array([_recording_id(r) for r in person_rows])
        position = np.array([r["position"] for r in person_rows], dtype=float)
        hop = np.array([hops.get((person, person_rows[q]["condition"], person_rows[q]["recording"])) or np.nan
                        for q in queries], dtype=float)
        same = recording[queries][:, None] == recording[train][None, :]
        expected = np.where(same, (position[train][None, :] - position[queries][:, None]) * hop[:, None], np.nan)
        query_features = features([thumbnails[person_rows[i]["path"]] for i in queries])
        corr, index, shift = _best(query_features, candidates[person][train], expected)
        report.checked += len(queries)
        for q, c, i, s in zip(queries, corr, index, shift):
            row, distance = person_rows[q], 1.0 - float(c)
            if distance < report.threshold:
                match = person_rows[train[int(i)]]
                report.leaks.append({"person": person, "path": row["path"], "split": row["split"],
                                     "recording": _recording_id(row), "train_path": match["path"],
                                     "train_recording": _recording_id(match), "distance": round(distance, 4),
                                     "shift_fraction": round(float(s) / THUMB_COLS, 4)})
    return report
