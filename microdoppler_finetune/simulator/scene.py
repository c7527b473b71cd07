"""One recording: a person walks a path in front of the radar; returns the complex radar signal.

World frame: radar at (0, 0, radar height), ground z = 0. The walker starts on the +x axis and heads
toward (heading pi + aspect) or away from (heading aspect) the radar. On a "line" path the heading stays
constant; on a "free" path it wanders slowly, so the aspect angle (and with it the radial speed) changes
during the recording. Received power is normalised per recording (as after automatic gain control):
range sets the geometry, while the SNR is a per-recording parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from microdoppler_finetune.simulator.gait import BodyDimensions, GaitModel, cycle_duration_s, relative_velocity
from microdoppler_finetune.simulator.people import (
    ConditionEffects,
    PersonParameters,
    RecordingParameters,
    condition_effects,
    gait_style,
)
from microdoppler_finetune.simulator.radar import (
    RadarSettings,
    add_noise_and_clutter,
    ranges_and_rcs,
    returns_from_ranges,
)
from microdoppler_finetune.simulator.scatterers import Scatterer, body_scatterers, carried_object

PLANNING_HORIZON_S = 20.0


@dataclass
class Walk:
    """Sampled motion of one recording (all arrays have one row per time sample)."""

    time_s: np.ndarray
    phase: np.ndarray  # gait cycles
    position_xy: np.ndarray  # (N, 2) body origin on the ground
    heading_rad: np.ndarray
    speed_mps: np.ndarray
    cycle_duration_s: float  # nominal, without jitter


def smooth_unit_noise(t: np.ndarray, rng: np.random.Generator, components: int = 4,
                      band_hz=(0.1, 0.6)) -> np.ndarray:
    """A slow zero-mean, unit-variance random fluctuation: a sum of sinusoids of random low frequency."""
    out = np.zeros_like(t)
    for _ in range(components):
        f = rng.uniform(*band_hz)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out * np.sqrt(2.0 / components)


def nominal_cycle_duration(person: PersonParameters, speed_mps: float) -> float:
    return cycle_duration_s(speed_mps, person.height_m) * person.cadence_factor


def plan_walk(person: PersonParameters, rec: RecordingParameters, n_samples: int, prf_hz: float,
              jitter: bool = True) -> Walk:
    """Time, gait phase, path and heading of a recording."""
    rng = np.random.default_rng(rec.noise_seed)
    t = np.arange(n_samples) / prf_hz
    duration = nominal_cycle_duration(person, rec.speed_mps)
    # Cadence and speed fluctuate together: the stride length stays the person's.
    fluctuation = 1.0 + (rec.cycle_jitter * smooth_unit_noise(t, rng) if jitter else np.zeros(n_samples))
    phase = rec.start_phase + np.cumsum(fluctuation) / (prf_hz * duration)
    speed = rec.speed_mps * fluctuation

    start_heading = np.radians(rec.aspect_deg) + (np.pi if rec.direction == "toward" else 0.0)
    heading = np.full(n_samples, start_heading)
    for amp, period, ph in zip(rec.heading_wander_deg, rec.heading_wander_period_s, rec.heading_wander_phase):
        wave = np.sin(2 * np.pi * (t / period + ph))
        heading += np.radians(amp) * (wave - wave[0])

    step = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (speed / prf_hz)[:, None]
    travelled = np.cumsum(step, axis=0) - step[0]
    # Walking toward the radar starts far enough away not to reach it. The start does not depend on the
    # recording's length (up to the horizon), so a recording's first frames are the same however long it is.
    horizon = max(float(t[-1]), PLANNING_HORIZON_S)
    start_range = rec.range_m + (rec.speed_mps * horizon if rec.direction == "toward" else 0.0)
    position = np.array([start_range, 0.0])[None, :] + travelled
    return Walk(t, phase, position, heading, speed, duration)


def carried_objects(joints: Dict[str, np.ndarray], phase: np.ndarray, person: PersonParameters,
                    effects: ConditionEffects) -> List[Scatterer]:
    """Backpack / bag / phone ellipsoids, built in the body frame from the joints."""
    out = []
    n = phase.shape[0]
    if effects.backpack:
        spine = joints["neck"] - joints["base"]
        spine_dir = spine / np.linalg.norm(spine, axis=1, keepdims=True)
        forward = np.array([1.0, 0.0, 0.0])
        back = -(forward[None, :] - (spine_dir @ forward)[:, None] * spine_dir)
        back /= np.linalg.norm(back, axis=1, keepdims=True)
        centre = joints["base"] + 0.62 * spine + back * (0.15 * person.girth + 0.10)
        out.append(carried_object("backpack", centre, spine_dir, 0.10, 0.16, 0.21, gain=1.5))
    if effects.bag:
        side = "r" if person.dominant_hand == "right" else "l"
        hand = joints[f"{side}_hand"]
        # The bag swings like a pendulum at the step frequency.
        swing = 0.2 * np.sin(2 * np.pi * 2 * phase + 0.8)
        down = np.stack([np.sin(swing), np.zeros(n), -np.cos(swing)], axis=1)
        out.append(carried_object("bag", hand + 0.15 * down, down, 0.06, 0.14, 0.15, gain=0.8))
        if effects.phone:
            other = "l" if side == "r" else "r"
            forearm = joints[f"{other}_hand"] - joints[f"{other}_elbow"]
            out.append(carried_object("phone", joints[f"{other}_hand"] + 0.05 * forearm / np.linalg.norm(
                forearm, axis=1, keepdims=True), forearm, 0.035, 0.01, 0.07, gain=2.0))
    return out


def to_world(points: np.ndarray, walk: Walk) -> np.ndarray:
    """Body frame (x forward) -> world frame: turn by the heading, then move to the path position."""
    c, s = np.cos(walk.heading_rad), np.sin(walk.heading_rad)
    x = walk.position_xy[:, 0] + c * points[:, 0] - s * points[:, 1]
    y = walk.position_xy[:, 1] + s * points[:, 0] + c * points[:, 1]
    return np.stack([x, y, points[:, 2]], axis=1)


def world_scatterers(person: PersonParameters, rec: RecordingParameters, walk: Walk) -> List[Scatterer]:
    """All ellipsoids of the walker (body + carried objects) in the world frame."""
    effects = condition_effects(rec.condition)
    model = GaitModel(BodyDimensions(person.height_m), relative_velocity(rec.speed_mps, person.height_m),
                      walk.cycle_duration_s, gait_style(person, effects))
    joints = model.joints(walk.phase)
    torso_scale = 1.08 if effects.backpack else 1.0  # straps and a fuller torso outline
    body = body_scatterers(joints, person.girth, torso_scale) + carried_objects(joints, walk.phase, person, effects)
    c, s = np.cos(walk.heading_rad), np.sin(walk.heading_rad)
    for sc in body:
        sc.centre = to_world(sc.centre, walk)
        axis = sc.axis
        sc.axis = np.stack([c * axis[:, 0] - s * axis[:, 1], s * axis[:, 0] + c * axis[:, 1], axis[:, 2]], axis=1)
    return body


def subsample(walk: Walk, step: int) -> Walk:
    """Every ``step``-th sample of a walk, always keeping the last one (so interpolation covers it all)."""
    idx = np.unique(np.append(np.arange(0, walk.time_s.shape[0], step), walk.time_s.shape[0] - 1))
    return Walk(walk.time_s[idx], walk.phase[idx], walk.position_xy[idx], walk.heading_rad[idx],
                walk.speed_mps[idx], walk.cycle_duration_s)


def simulate_signal(person: PersonParameters, rec: RecordingParameters, settings: RadarSettings, n_samples: int,
                    *, only: Optional[Sequence[str]] = None, noise: bool = True, jitter: bool = True) -> np.ndarray:
    """Complex baseband return of one recording. ``only``: keep just these scatterers (e.g. ["torso"])."""
    walk = plan_walk(person, rec, n_samples, settings.prf_hz, jitter=jitter)
    coarse = subsample(walk, settings.kinematics_step)
    scatterers = world_scatterers(person, rec, coarse)
    if only is not None:
        unknown = set(only) - {sc.name for sc in scatterers}
        if unknown:
            raise ValueError(f"no scatterer named {sorted(unknown)}; have {[sc.name for sc in scatterers]}")
        scatterers = [sc for sc in scatterers if sc.name in only]
    heading = coarse.heading_rad
    lateral = np.stack([-np.sin(heading), np.cos(heading), np.zeros_like(heading)], axis=1)
    radar = np.array([0.0, 0.0, rec.radar_height_m])
    ranges, rcs = ranges_and_rcs(scatterers, radar, lateral)
    if coarse.time_s.shape[0] != n_samples:
        ranges = np.stack([np.interp(walk.time_s, coarse.time_s, r) for r in ranges])
        rcs = np.stack([np.interp(walk.time_s, coarse.time_s, r) for r in rcs])
    signal = returns_from_ranges(ranges, rcs, settings.wavelength)
    if noise:
        rng = np.random.default_rng([rec.noise_seed, 1])
        signal = add_noise_and_clutter(signal, rec.snr_db, rec.clutter_db, rng, settings.prf_hz)
    return signal
