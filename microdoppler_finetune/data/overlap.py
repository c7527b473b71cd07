"""How far frames overlap in time, measured from the images (file names say nothing about it).

Consecutive frames of a recording are usually windows slid along one long spectrogram: frame i+1 is frame i
shifted left by a hop, with new columns on the right. Time runs along the image's columns, so the overlap is
found by aligning two frames along the columns. Each image becomes a small grayscale thumbnail
(``THUMB_ROWS`` x ``THUMB_COLS``, one column = 1/64 of the frame's time span, at ``PHASES`` sub-column
offsets), and the comparison uses its column-to-column difference: what changes over time (limb strokes,
noise) rather than what does not (the torso line, clutter), which would make any two frames of a walker look
alike. Two frames are shifted copies when the correlation (cosine) of their shared columns at the best
shift reaches ``MATCH_CORRELATION``: copies score 0.9-1.0 through JPEG and each frame's own colour scaling,
frames of other recordings mostly stay under 0.5. A walk repeats itself every stride, so independent frames
of one walk can reach 0.75 and more at some shift; a whole recording's pairs rarely agree on that shift.

``align`` is shared with leak_check.py, which looks for training frames that match val/test frames.
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .images import to_rgb

THUMB_COLS = 64  # time resolution: 1/64 of a frame's span
THUMB_ROWS = 32  # Doppler resolution (the comparison needs little of it)
PHASES = 2  # half-column shifts, so a hop that is no whole column still aligns (JPEG decodes at half size)
MATCH_CORRELATION = 0.8
MIN_SHARED_COLUMNS = 6  # fewer shared columns are too few to tell a copy from chance (overlaps under ~9 %)
FFT_SIZE = 128  # >= 2 x the difference image's width (THUMB_COLS - 2): no wrap-around
ALIAS_MARGIN = 0.05  # a peak this close to the best one may be the true hop (the best one a stride off)
SHARED_TOLERANCE = 1.0  # frames sharing under one column (1.6 % of their span, the hop's error) do not overlap


def single_threaded_blas():
    """align's matrix products are small: BLAS threads only spin against each other (on a busy 2-core
    machine they made it 100x slower)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def load_thumbnail(path: Path) -> np.ndarray:
    """(THUMB_ROWS, THUMB_COLS * PHASES) uint8 grayscale; columns = time."""
    with Image.open(path) as img:
        img.draft("L", (THUMB_COLS * PHASES, THUMB_ROWS))  # JPEG: decode at a reduced scale when possible
        img.load()
        gray = img if img.mode == "L" else to_rgb(img).convert("L")
    return np.asarray(gray.resize((THUMB_COLS * PHASES, THUMB_ROWS), Image.Resampling.BOX), dtype=np.uint8)


def load_thumbnails(paths: Sequence[Path], workers: Optional[int] = None) -> list:
    with ThreadPoolExecutor(max_workers=max(1, workers or 2)) as pool:  # decoding releases the GIL
        return list(pool.map(load_thumbnail, paths))


@dataclass
class Features:
    """What ``align`` needs of a batch of n frames: per-row spectra of the difference image at every phase
    and prefix sums of its column energies (for the norm of any run of shared columns)."""

    spectra: np.ndarray  # (n, PHASES, rows, F) complex64
    energy: np.ndarray  # (n, PHASES, w + 1) prefix sums over columns of the summed squares of each column
    width: int  # w: columns of the difference image

    def __getitem__(self, index) -> "Features":
        return Features(self.spectra[index], self.energy[index], self.width)


def features(thumbnails: Sequence[np.ndarray], phases: bool = True) -> Features:
    """``phases=False``: phase 0 only, enough for the frames that are only ever the ``b`` side of align."""
    stack = np.stack(thumbnails).astype(np.float32)  # (n, rows, cols * PHASES)
    # Moving average over PHASES columns: phase p sampled every PHASES columns = the thumbnail shifted by p/PHASES.
    csum = np.cumsum(np.pad(stack, ((0, 0), (0, 0), (1, 0))), axis=2)
    smooth = (csum[:, :, PHASES:] - csum[:, :, :-PHASES]) / PHASES
    sampled = np.stack([smooth[:, :, p::PHASES][:, :, :THUMB_COLS - 1] for p in range(PHASES if phases else 1)], 1)
    diff = sampled[..., 1:] - sampled[..., :-1]  # (n, phases, rows, w); its mean is ~0, so no centring
    w = diff.shape[-1]
    spectra = np.fft.rfft(diff, n=FFT_SIZE, axis=-1).astype(np.complex64)
    energy = np.cumsum((diff * diff).sum(axis=2), axis=-1, dtype=np.float64)
    energy = np.concatenate([np.zeros(energy.shape[:2] + (1,)), energy], axis=-1)
    return Features(spectra, energy, w)


def align(a: Features, b: Features, max_shift: float, pairwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation (cosine of the shared columns' difference images) of frames ``a`` with frames ``b``
    over time shifts up to ``max_shift`` thumbnail columns, and that shift (positive: the ``b`` frame starts
    later than the ``a`` frame). ``pairwise``: a[i] with b[i] -> (n,); otherwise every a with every b ->
    (len(a), len(b))."""
    corr, shifts = correlations(a, b, max_shift, pairwise)
    flat = corr.reshape(corr.shape[:-2] + (-1,))
    best = flat.argmax(axis=-1)
    return np.take_along_axis(flat, best[..., None], -1)[..., 0], shifts.reshape(-1)[best]


def correlations(a: Features, b: Features, max_shift: float, pairwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The correlation at every shift: (..., phases, FFT_SIZE), 0 where a shift is out of range, and the
    shifts themselves (phases, FFT_SIZE) in thumbnail columns."""
    w, n, phases = a.width, FFT_SIZE, a.spectra.shape[1]
    # Position k of the circular cross-correlation holds lag k (a[lag + j] with b[j]) or, past n - w, lag k - n.
    lag = np.arange(n)
    lag = np.where(lag < w, lag, lag - n)
    usable = (np.abs(lag) <= min(math.floor(max_shift), w - MIN_SHARED_COLUMNS)) & (lag > -w)
    length = np.clip(w - np.abs(lag), 0, w)
    a_start, b_start = np.clip(lag, 0, w), np.clip(-lag, 0, w)
    a_energy = a.energy[..., np.minimum(a_start + length, w)] - a.energy[..., a_start]  # (na, phases, n)
    b_energy = b.energy[:, 0, np.minimum(b_start + length, w)] - b.energy[:, 0, b_start]  # (nb, n)
    a_scale = np.where(usable & (a_energy > 1e-6), 1.0 / np.sqrt(np.maximum(a_energy, 1e-6)), 0.0).astype(np.float32)
    b_scale = np.where(b_energy > 1e-6, 1.0 / np.sqrt(np.maximum(b_energy, 1e-6)), 0.0).astype(np.float32)
    if pairwise:  # (n, phases, F): sum over rows of a's phases times b's phase 0
        cross = np.einsum("nprf,nrf->npf", a.spectra, np.conj(b.spectra[:, 0]))
        corr = np.fft.irfft(cross, n=n, axis=-1) * a_scale * b_scale[:, None]
    else:  # (na, nb, phases, F) as a batched matrix product over frequencies
        na, nb = len(a.spectra), len(b.spectra)
        left = a.spectra.transpose(3, 0, 1, 2).reshape(a.spectra.shape[3], na * phases, -1)
        right = np.conj(b.spectra[:, 0]).transpose(2, 1, 0)  # (F, rows, nb)
        cross = np.matmul(left, right).reshape(-1, na, phases, nb).transpose(1, 3, 2, 0)
        corr = np.fft.irfft(cross, n=n, axis=-1) * a_scale[:, None] * b_scale[None, :, None]
    return corr, lag[None, :] + np.arange(phases)[:, None] / PHASES


@dataclass
class RecordingOverlap:
    """The measured overlap of one recording's consecutive frames."""

    frames: int
    pairs: int  # consecutive pairs compared
    matched_pairs: int  # pairs that are shifted copies of each other at the recording's hop
    # Shift from a frame to the next in thumbnail columns (None: no overlap: at the best common shift, most
    # pairs are no copies); negative when the frame numbers run backwards in time.
    hop_columns: Optional[float]
    correlation: Optional[float]  # median correlation of the pairs at that shift

    @property
    def overlap_fraction(self) -> float:
        """Share of a frame's time span that its successor repeats."""
        return 0.0 if self.hop_columns is None else max(0.0, 1.0 - abs(self.hop_columns) / THUMB_COLS)

    @property
    def overlapping_frames(self) -> int:
        """How many successors of a frame still share part of its time span."""
        if self.hop_columns is None:
            return 0
        hop = abs(self.hop_columns)
        if hop < 1.0 / PHASES:  # consecutive frames are identical
            return max(0, self.frames - 1)
        return min(max(0, self.frames - 1), math.ceil((THUMB_COLS - SHARED_TOLERANCE) / hop) - 1)

    def to_dict(self) -> dict:
        return {"frames": self.frames, "pairs": self.pairs, "matched_pairs": self.matched_pairs,
                "hop_fraction": None if self.hop_columns is None else round(self.hop_columns / THUMB_COLS, 4),
                "overlap_fraction": round(self.overlap_fraction, 4), "overlapping_frames": self.overlapping_frames,
                "median_correlation": None if self.correlation is None else round(self.correlation, 3)}


def measure_overlap(frames: Features) -> RecordingOverlap:
    """Overlap of one recording from its frames' features, in frame number order."""
    n = len(frames.spectra)
    if n < 2:
        return RecordingOverlap(n, 0, 0, None, None)
    # One hop for the whole recording, from the pairs' mean correlation at each shift. A walk repeats itself
    # every stride, so a pair can also match a stride off, nearly as well: of the peaks within ALIAS_MARGIN
    # of the best, the smallest shift wins (the larger overlap: the safe side). Shifts that keep half the
    # frame shared first: a few shared columns match by chance too easily.
    for max_shift in (THUMB_COLS / 2, THUMB_COLS):
        corr, shifts = correlations(frames[:-1], frames[1:], max_shift=max_shift, pairwise=True)
        order = np.argsort(shifts, axis=None)  # the mean curve along the shift axis, to find its peaks
        corr, shifts = corr.reshape(len(corr), -1)[:, order], shifts.reshape(-1)[order]
        curve = corr.mean(axis=0)
        padded = np.concatenate([[-np.inf], curve, [-np.inf]])
        peaks = (curve >= padded[:-2]) & (curve >= padded[2:]) & (curve >= curve.max() - ALIAS_MARGIN)
        peaks &= np.median(corr, axis=0) >= MATCH_CORRELATION
        if peaks.any():
            best = np.flatnonzero(peaks)[np.abs(shifts[peaks]).argmin()]
            at_hop = corr[:, best]
            return RecordingOverlap(n, n - 1, int((at_hop >= MATCH_CORRELATION).sum()), float(shifts[best]),
                                    float(np.median(at_hop)))
    at_best = corr[:, curve.argmax()]
    return RecordingOverlap(n, n - 1, int((at_best >= MATCH_CORRELATION).sum()), None, float(np.median(at_best)))
