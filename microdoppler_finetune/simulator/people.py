"""Who walks, how, and in which recording: parameter sampling, deterministic from (seed, indices).

Three levels, each with its own random stream so that asking for fewer people, fewer recordings or a
subset of conditions never changes the others:

* person (seed, person index): body and walking style that make a person identifiable;
* condition: what the person carries and whether the path is a straight line or free;
* recording (seed, person, condition, recording index): speed, start phase, geometry, noise, clutter.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Tuple

import numpy as np

from microdoppler_finetune.simulator.gait import ArmHold, GaitStyle

LOADS = ("Normal", "Backpack", "Bag", "Bag_Phone")
PATHS = ("free", "line")
CONDITION_NAMES = tuple(f"{load}_{path}" for load in LOADS for path in PATHS)

_PERSON_STREAM = 1
_RECORDING_STREAM = 2


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def check_condition(name: str) -> str:
    if name not in CONDITION_NAMES:
        raise ValueError(f"unknown walking condition {name!r}; choose from {', '.join(CONDITION_NAMES)}")
    return name


@dataclass(frozen=True)
class PersonParameters:
    person_index: int  # 1-based, as in the folder name ID_<n>
    height_m: float
    preferred_speed_mps: float
    cadence_factor: float  # cycle duration multiplier at the same speed (short quick steps < 1 < long slow)
    arm_swing_gain: float
    arm_left_right_ratio: float
    leg_asymmetry: float
    torso_sway_gain: float
    torso_bounce_gain: float
    girth: float
    dominant_hand: str  # carries the bag

    def to_dict(self) -> dict:
        return asdict(self)


def sample_person(seed: int, person_index: int) -> PersonParameters:
    """Body and style of person ``person_index`` (1-based)."""
    if person_index < 1:
        raise ValueError(f"person_index starts at 1 (folder ID_1), got {person_index}")
    rng = _rng(seed, _PERSON_STREAM, person_index)
    height = float(np.clip(rng.normal(1.72, 0.09), 1.50, 1.98))
    leg_length = 0.491 * height
    # Preferred speed drawn as a relative velocity so tall and short people both walk naturally.
    preferred_rv = float(rng.uniform(1.15, 1.75))
    return PersonParameters(
        person_index=person_index,
        height_m=height,
        preferred_speed_mps=preferred_rv * leg_length,
        # Style ranges wide enough that, as in real data, a person is recognised across recordings (same-condition
        # identification of 90+ %) while a backpack still costs about a quarter of that (DESIGN.md section 5).
        cadence_factor=float(rng.uniform(0.82, 1.18)),
        arm_swing_gain=float(rng.uniform(0.35, 1.65)),
        arm_left_right_ratio=float(rng.uniform(0.75, 1.25)),
        leg_asymmetry=float(rng.uniform(-0.2, 0.2)),
        torso_sway_gain=float(rng.uniform(0.4, 1.8)),
        torso_bounce_gain=float(rng.uniform(0.4, 1.8)),
        girth=float(rng.uniform(0.85, 1.2)),
        dominant_hand="right" if rng.uniform() < 0.85 else "left",
    )


@dataclass(frozen=True)
class ConditionEffects:
    """What a walking condition changes relative to Normal."""

    name: str
    load: str
    path: str  # "line": constant heading; "free": heading wanders during the recording
    speed_factor: float = 1.0
    arm_swing_factor: float = 1.0
    bounce_factor: float = 1.0
    torso_lean_deg: float = 0.0
    backpack: bool = False
    bag: bool = False  # carried in the dominant hand, that arm held still
    phone: bool = False  # held in front in the other hand, that arm held still too


def condition_effects(name: str) -> ConditionEffects:
    load, path = check_condition(name).rsplit("_", 1)
    if load == "Normal":
        return ConditionEffects(name, load, path)
    if load == "Backpack":
        return ConditionEffects(name, load, path, speed_factor=0.97, arm_swing_factor=0.6, bounce_factor=0.85,
                                torso_lean_deg=6.0, backpack=True)
    if load == "Bag":
        return ConditionEffects(name, load, path, speed_factor=0.97, bag=True)
    return ConditionEffects(name, load, path, speed_factor=0.92, bag=True, phone=True)


BAG_ARM = ArmHold(shoulder_deg=2.0, elbow_deg=8.0, residual_swing=0.12)
PHONE_ARM = ArmHold(shoulder_deg=20.0, elbow_deg=70.0, residual_swing=0.04)


def gait_style(person: PersonParameters, effects: ConditionEffects) -> GaitStyle:
    """The person's style with the condition applied (held arms, damped swing, lean)."""
    holds = {"left": None, "right": None}
    if effects.bag:
        holds[person.dominant_hand] = BAG_ARM
        if effects.phone:
            holds["left" if person.dominant_hand == "right" else "right"] = PHONE_ARM
    return GaitStyle(
        arm_swing_gain=person.arm_swing_gain * effects.arm_swing_factor,
        arm_left_right_ratio=person.arm_left_right_ratio,
        leg_asymmetry=person.leg_asymmetry,
        torso_sway_gain=person.torso_sway_gain,
        torso_bounce_gain=person.torso_bounce_gain * effects.bounce_factor,
        torso_lean_deg=effects.torso_lean_deg,
        left_arm_hold=holds["left"],
        right_arm_hold=holds["right"],
    )


@dataclass(frozen=True)
class RecordingParameters:
    condition: str
    recording_index: int  # 0-based within (person, condition)
    speed_mps: float
    start_phase: float  # gait cycles
    aspect_deg: float  # heading relative to the line of sight at the start (0 = straight at/away from radar)
    direction: str  # "toward" or "away"
    range_m: float  # nearest point of the walk (m): its start when walking away, about its 20 s horizon when toward
    radar_height_m: float
    cycle_jitter: float  # relative std of the instantaneous cadence (and speed)
    snr_db: float  # mean body return power over noise power, per pulse
    clutter_db: float  # static (zero-Doppler) return power relative to the body's
    heading_wander_deg: Tuple[float, ...] = field(default=())  # free path: amplitudes of the heading wander
    heading_wander_period_s: Tuple[float, ...] = field(default=())
    heading_wander_phase: Tuple[float, ...] = field(default=())
    noise_seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("heading_wander_deg", "heading_wander_period_s", "heading_wander_phase"):
            d[k] = list(d[k])
        return d


def sample_recording(seed: int, person: PersonParameters, condition: str, recording_index: int) -> RecordingParameters:
    effects = condition_effects(condition)
    rng = _rng(seed, _RECORDING_STREAM, person.person_index, CONDITION_NAMES.index(condition), recording_index)
    speed = person.preferred_speed_mps * effects.speed_factor * float(rng.uniform(0.95, 1.05))
    # A line walk keeps its heading within a few degrees of the radar's line of sight; a free walk starts anywhere
    # within 30 degrees and wanders (below).
    aspect = float(rng.uniform(0.0, 30.0 if effects.path == "free" else 10.0) * rng.choice([-1.0, 1.0]))
    wander_deg: Tuple[float, ...] = ()
    wander_period: Tuple[float, ...] = ()
    wander_phase: Tuple[float, ...] = ()
    if effects.path == "free":
        # Two slow turns of different periods: the walker drifts across the radar's view.
        wander_deg = (float(rng.uniform(20, 45)), float(rng.uniform(5, 15)))
        wander_period = (float(rng.uniform(6, 14)), float(rng.uniform(2.5, 5)))
        wander_phase = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    return RecordingParameters(
        condition=condition,
        recording_index=recording_index,
        speed_mps=speed,
        start_phase=float(rng.uniform(0, 1)),
        aspect_deg=aspect,
        direction="toward" if rng.uniform() < 0.5 else "away",
        range_m=float(rng.uniform(2.0, 6.0)),
        radar_height_m=float(rng.uniform(0.8, 1.3)),
        cycle_jitter=float(rng.uniform(0.01, 0.04)),
        snr_db=float(rng.uniform(10, 30)),
        clutter_db=float(rng.uniform(-25, -5)),
        heading_wander_deg=wander_deg,
        heading_wander_period_s=wander_period,
        heading_wander_phase=wander_phase,
        noise_seed=int(rng.integers(0, 2 ** 31 - 1)),
    )


def recording_name(recording_index: int, takes_per_session: int = 3) -> str:
    """``caseX_Y``: session X, take Y (both 1-based), as in real datasets' file names."""
    return f"case{recording_index // takes_per_session + 1}_{recording_index % takes_per_session + 1}"
