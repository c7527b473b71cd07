"""Continuous-wave radar returns of a set of scatterers, noise and clutter, and the STFT spectrogram.

The baseband return of pulse n is s[n] = sum_k sqrt(sigma_k[n]) exp(-j 4 pi R_k[n] / lambda): a body
part coming closer (R falling) gives a positive Doppler frequency 2 v_r / lambda.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from microdoppler_finetune.simulator.scatterers import Scatterer, scatterer_rcs

SPEED_OF_LIGHT = 299_792_458.0

# Carrier and a PRF whose unambiguous Doppler span (+-PRF/2) covers the toes of a fast walker (about
# 4.2 x 1.8 m/s = 7.5 m/s, i.e. 2 v / lambda = 1.2 kHz at 24 GHz) without aliasing.
BANDS = {
    "5.8GHz": (5.8e9, 1000.0),
    "24GHz": (24e9, 2500.0),
    "77GHz": (77e9, 8000.0),
}


@dataclass(frozen=True)
class RadarSettings:
    """Radar, STFT and image-framing settings shared by every recording of a dataset."""

    carrier_hz: float = 24e9
    prf_hz: float = 2500.0
    window_s: float = 0.1  # STFT window length
    overlap: float = 0.9  # fraction of the window shared by neighbouring STFT columns
    nfft: Optional[int] = None  # Doppler bins; None: next power of two >= the window length in pulses
    dynamic_range_db: float = 50.0  # images show [max - dynamic range, max]
    frame_duration_s: float = 3.0  # time span of one image
    frame_hop_s: float = 0.5  # start-to-start time of consecutive images of one recording (they overlap)
    # Body motion is computed at this rate and its ranges/RCS interpolated to every pulse: limbs are smooth
    # at this scale (linear interpolation error well under 0.1 mm, against lambda / 4 pi = 1 mm at 24 GHz).
    kinematics_hz: float = 500.0

    @classmethod
    def for_band(cls, band: str, **overrides) -> "RadarSettings":
        if band not in BANDS:
            raise ValueError(f"unknown radar band {band!r}; choose from {', '.join(BANDS)}")
        carrier, prf = BANDS[band]
        return cls(carrier_hz=carrier, prf_hz=prf, **overrides)

    def __post_init__(self):
        if self.window_samples < 8:
            raise ValueError(f"STFT window of {self.window_s} s at PRF {self.prf_hz} Hz is under 8 pulses; "
                             f"raise window_s or prf_hz")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.frame_columns < 2:
            raise ValueError(f"frame_duration_s={self.frame_duration_s} covers fewer than 2 STFT columns")

    @property
    def kinematics_step(self) -> int:
        """Pulses between two evaluations of the body motion."""
        return max(1, int(round(self.prf_hz / self.kinematics_hz)))

    @property
    def wavelength(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.prf_hz))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.window_samples * (1.0 - self.overlap))))

    @property
    def fft_size(self) -> int:
        return self.nfft or int(2 ** np.ceil(np.log2(self.window_samples)))

    @property
    def frame_columns(self) -> int:
        """STFT columns in one image."""
        return int(round(self.frame_duration_s * self.prf_hz / self.hop_samples))

    @property
    def frame_hop_columns(self) -> int:
        return max(1, int(round(self.frame_hop_s * self.prf_hz / self.hop_samples)))

    def samples_for_frames(self, frames: int) -> int:
        """Pulses needed so that ``frames`` consecutive overlapping images fit."""
        columns = (frames - 1) * self.frame_hop_columns + self.frame_columns
        return (columns - 1) * self.hop_samples + self.window_samples

    def doppler_axis_hz(self) -> np.ndarray:
        """Frequency of each spectrogram row, most negative first."""
        return np.fft.fftshift(np.fft.fftfreq(self.fft_size, d=1.0 / self.prf_hz))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(wavelength_m=self.wavelength, window_samples=self.window_samples, hop_samples=self.hop_samples,
                 fft_size=self.fft_size, frame_columns=self.frame_columns,
                 frame_hop_columns=self.frame_hop_columns)
        return d


def ranges_and_rcs(scatterers: Sequence[Scatterer], radar_position: np.ndarray,
                   lateral: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distance to the radar (m) and RCS (m^2) of every scatterer at every sample: two (K, N) arrays."""
    ranges, rcs = [], []
    for sc in scatterers:
        to_radar = radar_position[None, :] - sc.centre
        distance = np.linalg.norm(to_radar, axis=1)
        ranges.append(distance)
        rcs.append(scatterer_rcs(sc, to_radar / distance[:, None], lateral))
    return np.stack(ranges), np.stack(rcs)


def returns_from_ranges(ranges: np.ndarray, rcs: np.ndarray, wavelength: float) -> np.ndarray:
    """s[n] = sum_k sqrt(sigma_k[n]) exp(-j 4 pi R_k[n] / lambda) for (K, N) ranges and RCS."""
    phase = (-4.0 * np.pi / wavelength) * ranges
    amplitude = np.sqrt(rcs)
    return (amplitude * np.cos(phase)).sum(axis=0) + 1j * (amplitude * np.sin(phase)).sum(axis=0)


def add_noise_and_clutter(signal: np.ndarray, snr_db: float, clutter_db: float, rng: np.random.Generator,
                          prf_hz: float, reference_s: float = 2.0) -> np.ndarray:
    """White receiver noise at ``snr_db`` below the body's mean power, and a static (zero-Doppler) return
    at ``clutter_db`` relative to it, with a slight slow fluctuation so its line has a realistic width.

    The body power is measured on the first ``reference_s`` seconds and the noise is drawn sample by
    sample, so the start of a recording does not depend on how long the recording is."""
    n = signal.shape[0]
    power = float(np.mean(np.abs(signal[: max(1, int(reference_s * prf_hz))]) ** 2))
    t = np.arange(n) / prf_hz
    wobble = 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    clutter = np.sqrt(power * 10 ** (clutter_db / 10)) * np.exp(1j * rng.uniform(0, 2 * np.pi)) * (1 + wobble)
    pairs = rng.standard_normal((n, 2))
    noise = np.sqrt(power / 10 ** (snr_db / 10) / 2) * (pairs[:, 0] + 1j * pairs[:, 1])
    return signal + noise + clutter


def stft_power(signal: np.ndarray, settings: RadarSettings) -> np.ndarray:
    """Power spectrogram (Doppler bins x columns), most negative Doppler in row 0. Hann window."""
    win, hop = settings.window_samples, settings.hop_samples
    if signal.shape[0] < win:
        raise ValueError(f"signal of {signal.shape[0]} pulses is shorter than one STFT window ({win})")
    frames = np.lib.stride_tricks.sliding_window_view(signal, win)[::hop]  # (columns, win)
    spectrum = np.fft.fft(frames * np.hanning(win)[None, :], n=settings.fft_size, axis=1)
    power = np.abs(np.fft.fftshift(spectrum, axes=1)) ** 2
    return power.T  # (fft_size, columns)


def column_times_s(columns: int, settings: RadarSettings) -> np.ndarray:
    """Centre time of each STFT column."""
    return (np.arange(columns) * settings.hop_samples + settings.window_samples / 2) / settings.prf_hz


def frame_slices(num_frames: int, settings: RadarSettings) -> Tuple[slice, ...]:
    """Column ranges of consecutive overlapping images."""
    fc, fh = settings.frame_columns, settings.frame_hop_columns
    return tuple(slice(i * fh, i * fh + fc) for i in range(num_frames))
