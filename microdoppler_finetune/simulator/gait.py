"""Boulic-Thalmann walking kinematics (the global human walking model, as used by V. C. Chen for radar).

The model drives 17 joints from a handful of trajectories that depend only on the relative walking
velocity RV = V / Ht (Ht = thigh + shank length): three translations of the spine origin, pelvis and
thorax rotations, and hip/knee/ankle/shoulder/elbow flexion curves given as control points that are
interpolated with a periodic monotone cubic (PCHIP). Control-point values are the published ones from
Boulic et al. (1990), appendices A-D; the code and the sign conventions here are our own.

Body frame: x forward, y to the person's left, z up, origin on the ground under the spine origin.
Angles are in degrees. Flexion of a hanging segment is positive when its lower end swings forward.
Everything is vectorised over samples: ``phase`` is an array of gait phases (cycles, any real value;
the right heel strikes at integer phases).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
from scipy.interpolate import PchipInterpolator

# Segment lengths as fractions of body height (Boulic / Chen).
SEGMENT_FRACTIONS = {
    "head": 0.130,
    "torso": 0.288,
    "upper_leg": 0.245,
    "lower_leg": 0.246,
    "upper_arm": 0.188,
    "lower_arm": 0.152,
    "foot": 0.143,
    "shoulder": 0.259,  # full shoulder width; each side is half of it
    "hip": 0.191,  # full hip width; each side is half of it
}

JOINT_NAMES = (
    "base", "neck", "head", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_hand", "r_hand",
    "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle", "l_toe", "r_toe",
)

# The model's validity range for RV (Boulic's three gait regimes cover 0 < RV <= 3).
MIN_RELATIVE_VELOCITY = 0.05
MAX_RELATIVE_VELOCITY = 3.0


@dataclass(frozen=True)
class BodyDimensions:
    """Segment lengths in metres, all proportional to the height."""

    height: float

    def length(self, segment: str) -> float:
        return SEGMENT_FRACTIONS[segment] * self.height

    @property
    def leg_length(self) -> float:
        """Ht of the model: thigh + shank = 0.491 H."""
        return self.length("upper_leg") + self.length("lower_leg")


def relative_velocity(speed_mps: float, height_m: float) -> float:
    """RV = V / Ht."""
    return speed_mps / BodyDimensions(height_m).leg_length


def cycle_duration_s(speed_mps: float, height_m: float) -> float:
    """Duration of one gait cycle (two steps): 1.346 * sqrt(RV) / RV seconds."""
    rv = relative_velocity(speed_mps, height_m)
    return 1.346 * np.sqrt(rv) / rv


def cycle_length_m(speed_mps: float, height_m: float) -> float:
    """Distance covered in one gait cycle: 1.346 * sqrt(RV) * Ht metres."""
    rv = relative_velocity(speed_mps, height_m)
    return 1.346 * np.sqrt(rv) * BodyDimensions(height_m).leg_length


def gait_regime(rv: float) -> str:
    """Boulic's regimes: 'a' slow (RV < 0.5), 'b' normal (RV < 1.3), 'c' fast (RV <= 3)."""
    if not MIN_RELATIVE_VELOCITY <= rv <= MAX_RELATIVE_VELOCITY:
        raise ValueError(f"relative velocity RV={rv:.3f} is outside the walking model's range "
                         f"[{MIN_RELATIVE_VELOCITY}, {MAX_RELATIVE_VELOCITY}]: choose a speed between "
                         f"{MIN_RELATIVE_VELOCITY} and {MAX_RELATIVE_VELOCITY} leg lengths per second")
    if rv < 0.5:
        return "a"
    if rv < 1.3:
        return "b"
    return "c"


class PeriodicCurve:
    """A 1-periodic monotone cubic through control points (x in cycles, y in degrees)."""

    def __init__(self, xs, ys):
        xs = np.mod(np.asarray(xs, dtype=float), 1.0)
        ys = np.asarray(ys, dtype=float)
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
        # Control points that coincide modulo one cycle (Boulic lists e.g. -0.1 and 0.9) are one point.
        keep_x, keep_y = [xs[0]], [ys[0]]
        for x, y in zip(xs[1:], ys[1:]):
            if x - keep_x[-1] < 1e-3:
                keep_y[-1] = 0.5 * (keep_y[-1] + y)
            else:
                keep_x.append(x)
                keep_y.append(y)
        if len(keep_x) > 1 and keep_x[0] + 1.0 - keep_x[-1] < 1e-3:
            keep_y[0] = 0.5 * (keep_y[0] + keep_y[-1])
            keep_x.pop()
            keep_y.pop()
        kx, ky = np.array(keep_x), np.array(keep_y)
        # Three copies make the interpolant smooth across the cycle boundary.
        self._interp = PchipInterpolator(np.concatenate([kx - 1, kx, kx + 1]), np.tile(ky, 3))

    def __call__(self, phase: np.ndarray) -> np.ndarray:
        return self._interp(np.mod(phase, 1.0))


def _ramp(rv: float) -> float:
    """Position of RV inside the fast regime 'c' (0 at RV=1.3, 1 at RV=3)."""
    return (rv - 1.3) / 1.7


def hip_flexion_curve(rv: float, regime: str) -> PeriodicCurve:
    if regime == "a":
        return PeriodicCurve([-0.1, 0.5, 0.9], [50 * rv, -30 * rv, 50 * rv])
    if regime == "b":
        return PeriodicCurve([-0.1, 0.5, 0.9], [25, -15, 25])
    r = _ramp(rv)
    return PeriodicCurve([0.2 * r - 0.1, 0.5, 0.9], [5 * r + 25, -15, 6 * r + 25])


def knee_flexion_curve(rv: float, regime: str) -> PeriodicCurve:
    if regime == "a":
        return PeriodicCurve([0.17, 0.4, 0.75, 1.0], [3, 3, 140 * rv, 3])
    if regime == "b":
        return PeriodicCurve([0.17, 0.4, 0.75, 1.0], [3, 3, 70, 3])
    r = _ramp(rv)
    return PeriodicCurve([-0.05 * r + 0.17, 0.4, -0.05 * r + 0.75, -0.03 * r + 1.0],
                         [22 * r + 3, 3, -5 * r + 70, 3 * r + 3])


def ankle_flexion_curve(rv: float, regime: str, support_fraction: float) -> PeriodicCurve:
    """Positive = toes up (dorsiflexion). ``support_fraction``: part of the cycle a foot is on the ground."""
    if regime == "a":
        return PeriodicCurve([0, 0.08, 0.5, support_fraction, 0.85],
                             [-3, -30 * rv - 3, 22 * rv - 3, -34 * rv - 3, -3])
    if regime == "b":
        return PeriodicCurve([0, 0.08, 0.5, support_fraction, 0.85], [-3, -18, 8, -20, -3])
    r = _ramp(rv)
    return PeriodicCurve([0, 0.08, -0.1 * r + 0.5, support_fraction, 0.85],
                         [5 * r - 3, 4 * r - 18, -3 * r + 8, -8 * r - 20, 5 * r - 3])


def thorax_torsion_curve(rv: float) -> PeriodicCurve:
    return PeriodicCurve([0.1, 0.4, 0.6, 0.9], [4 / 3 * rv, -4.5 / 3 * rv, -4 / 3 * rv, 4.5 / 3 * rv])


def elbow_flexion_curve(rv: float, regime: str) -> PeriodicCurve:
    if regime == "a":
        return PeriodicCurve([0.05, 0.5, 0.9], [6 * rv + 3, 34 * rv + 3, 10 * rv + 3])
    if regime == "b":
        s = (rv - 0.5) / 0.8
        return PeriodicCurve([0.05, 0.01 * s + 0.5, 0.9], [8 * s + 6, 24 * s + 20, 9 * s + 8])
    r = _ramp(rv)
    return PeriodicCurve([0.05, 0.04 * r + 0.51, -0.1 * r + 0.9], [-6 * r + 14, 26 * r + 44, -6 * r + 17])


def pelvis_list_deg(phase: np.ndarray, rv: float) -> np.ndarray:
    """Left/right rotation of the pelvis (falls toward the swinging leg): piecewise cosine arcs."""
    a = 1.66 * rv
    p = np.mod(phase, 1.0)
    out = np.empty_like(p)
    m1 = p < 0.15
    m2 = (p >= 0.15) & (p < 0.5)
    m3 = (p >= 0.5) & (p < 0.65)
    m4 = p >= 0.65
    out[m1] = -a + a * np.cos(2 * np.pi * 10 * p[m1] / 3)
    out[m2] = -a - a * np.cos(2 * np.pi * 10 * (p[m2] - 0.15) / 7)
    out[m3] = a - a * np.cos(2 * np.pi * 10 * (p[m3] - 0.5) / 3)
    out[m4] = a + a * np.cos(2 * np.pi * 10 * (p[m4] - 0.65) / 7)
    return out


@dataclass
class ArmHold:
    """An arm that does not swing: fixed shoulder/elbow flexion plus a small residual of the swing."""

    shoulder_deg: float
    elbow_deg: float
    residual_swing: float = 0.1  # fraction of the natural swing that is left (the arm is not rigid)


@dataclass
class GaitStyle:
    """How one person (in one condition) deviates from the average walker. 1.0 / 0.0 = the plain model."""

    arm_swing_gain: float = 1.0
    arm_left_right_ratio: float = 1.0  # left arm swing = right arm swing * ratio
    leg_asymmetry: float = 0.0  # right leg swings (1 + a/2) of normal, left (1 - a/2); the left also lags
    torso_sway_gain: float = 1.0  # lateral translation, pelvis list and torsions
    torso_bounce_gain: float = 1.0  # vertical translation and pelvis pitch
    torso_lean_deg: float = 0.0  # constant forward lean of the upper body (e.g. with a backpack)
    left_arm_hold: Optional[ArmHold] = None
    right_arm_hold: Optional[ArmHold] = None


@dataclass
class GaitModel:
    """Joint trajectories of one walker at one relative velocity; evaluate with :meth:`joints`."""

    dims: BodyDimensions
    rv: float
    cycle_duration_s: float
    style: GaitStyle = field(default_factory=GaitStyle)

    def __post_init__(self):
        self.regime = gait_regime(self.rv)
        # Relative duration of the support phase (Boulic: ds = 0.752 dc - 0.143), kept inside the ankle's
        # neighbouring control points so they stay ordered.
        support = 0.752 - 0.143 / self.cycle_duration_s
        self.support_fraction = float(np.clip(support, 0.52, 0.83))
        self.hip = hip_flexion_curve(self.rv, self.regime)
        self.knee = knee_flexion_curve(self.rv, self.regime)
        self.ankle = ankle_flexion_curve(self.rv, self.regime, self.support_fraction)
        self.thorax = thorax_torsion_curve(self.rv)
        self.elbow = elbow_flexion_curve(self.rv, self.regime)
        grid = np.linspace(0, 1, 256, endpoint=False)
        self._means = {name: float(np.mean(getattr(self, name)(grid))) for name in ("hip", "knee", "elbow")}

    # --- angle trajectories -------------------------------------------------------------------------

    def _scaled(self, name: str, phase: np.ndarray, gain: float) -> np.ndarray:
        """A flexion curve with its swing around the cycle mean scaled by ``gain``."""
        mean = self._means[name]
        return mean + gain * (getattr(self, name)(phase) - mean)

    def leg_angles(self, phase: np.ndarray, side: str):
        """(hip, knee, ankle) flexion in degrees for one leg; the left leg runs half a cycle later."""
        asym = self.style.leg_asymmetry
        if side == "r":
            p, gain = phase, 1.0 + asym / 2
        else:
            # An asymmetric walker's left step is not exactly half a cycle after the right one.
            p, gain = phase + 0.5 + 0.1 * asym, 1.0 - asym / 2
        return self._scaled("hip", p, gain), self._scaled("knee", p, gain), self.ankle(p)

    def arm_angles(self, phase: np.ndarray, side: str):
        """(shoulder, elbow) flexion in degrees. The right arm swings with the left leg."""
        style = self.style
        gain = style.arm_swing_gain * (style.arm_left_right_ratio if side == "l" else 1.0)
        p = phase if side == "r" else phase + 0.5
        a = 9.88 * self.rv
        swing = -a * np.cos(2 * np.pi * p)  # shoulder flexion around its offset; most backward at heel strike
        shoulder = 3 - a / 2 + gain * swing
        elbow = self._scaled("elbow", p, gain)
        hold = style.left_arm_hold if side == "l" else style.right_arm_hold
        if hold is not None:
            shoulder = hold.shoulder_deg + hold.residual_swing * gain * swing
            elbow = hold.elbow_deg + hold.residual_swing * (elbow - self._means["elbow"])
        return shoulder, elbow

    def trunk_motion(self, phase: np.ndarray):
        """Spine-origin translations (m) and pelvis/thorax rotations (deg)."""
        rv, style = self.rv, self.style
        slow = self.regime == "a"
        a_vert = 0.015 * rv * style.torso_bounce_gain
        vertical = -a_vert + a_vert * np.sin(2 * np.pi * (2 * phase - 0.35))
        a_lat = (-0.128 * rv ** 2 + 0.128 * rv) if slow else -0.032
        lateral = style.torso_sway_gain * a_lat * np.sin(2 * np.pi * (phase - 0.1))
        a_fb = (-0.084 * rv ** 2 + 0.084 * rv) if slow else -0.021
        forward = a_fb * np.sin(2 * np.pi * (2 * phase + 2 * (0.625 - self.support_fraction)))
        a_pitch = ((-8 * rv ** 2 + 8 * rv) if slow else 2.0) * style.torso_bounce_gain
        pitch = -a_pitch + a_pitch * np.sin(2 * np.pi * (2 * phase - 0.1))
        roll = style.torso_sway_gain * pelvis_list_deg(phase, rv)
        # Pelvis turns toward the forward leg (right hip forward at the right heel strike); thorax counters.
        pelvis_twist = style.torso_sway_gain * 4 * rv * np.cos(2 * np.pi * phase)
        thorax_twist = -style.torso_sway_gain * self.thorax(phase)
        return forward, lateral, vertical, pitch, roll, pelvis_twist, thorax_twist

    # --- positions ------------------------------------------------------------------------------------

    def joints(self, phase: np.ndarray) -> Dict[str, np.ndarray]:
        """Positions of the 17 joints in the body frame, each (N, 3) metres."""
        phase = np.asarray(phase, dtype=float)
        d = self.dims
        n = phase.shape[0]
        forward, lateral, vertical, pitch, roll, pelvis_twist, thorax_twist = self.trunk_motion(phase)
        base = np.stack([forward, lateral, d.leg_length + vertical], axis=1)
        zeros = np.zeros(n)
        out = {"base": base}

        # Upper body: lean + pitch about y, then the thorax twist about z.
        up_pitch = np.radians(pitch + self.style.torso_lean_deg)
        up_twist = np.radians(thorax_twist)

        def upper(v):
            return base + rotate_z(rotate_y(v, up_pitch), up_twist)

        torso, half_sh = d.length("torso"), d.length("shoulder") / 2
        out["neck"] = upper(_const(n, 0, 0, torso))
        out["head"] = upper(_const(n, 0, 0, torso + d.length("head")))
        for side, sign in (("l", 1.0), ("r", -1.0)):
            shoulder_deg, elbow_deg = self.arm_angles(phase, side)
            sh = np.radians(shoulder_deg)
            fa = np.radians(shoulder_deg + elbow_deg)
            shoulder = _const(n, 0, sign * half_sh, torso)
            elbow = shoulder + d.length("upper_arm") * hanging(sh)
            hand = elbow + d.length("lower_arm") * hanging(fa)
            out[f"{side}_shoulder"] = upper(shoulder)
            out[f"{side}_elbow"] = upper(elbow)
            out[f"{side}_hand"] = upper(hand)

        # Pelvis: list about x, then the twist about z; the legs hang from it.
        pel_roll, pel_twist = np.radians(roll), np.radians(pelvis_twist)

        def pelvis(v):
            return base + rotate_z(rotate_x(v, pel_roll), pel_twist)

        half_hip = d.length("hip") / 2
        for side, sign in (("l", 1.0), ("r", -1.0)):
            hip_deg, knee_deg, ankle_deg = self.leg_angles(phase, side)
            thigh = np.radians(hip_deg)
            shank = np.radians(hip_deg - knee_deg)  # the knee bends the shank backwards
            hip = _const(n, 0, sign * half_hip, 0)
            knee = hip + d.length("upper_leg") * hanging(thigh)
            ankle = knee + d.length("lower_leg") * hanging(shank)
            # The foot is perpendicular to the shank, pointing forward; dorsiflexion lifts the toes.
            foot_angle = shank + np.radians(ankle_deg)
            toe = ankle + d.length("foot") * np.stack([np.cos(foot_angle), zeros, np.sin(foot_angle)], axis=1)
            out[f"{side}_hip"] = pelvis(hip)
            out[f"{side}_knee"] = pelvis(knee)
            out[f"{side}_ankle"] = pelvis(ankle)
            out[f"{side}_toe"] = pelvis(toe)
        return out


def hanging(angle_rad: np.ndarray) -> np.ndarray:
    """Unit vector of a segment hanging down, swung forward by ``angle`` about the lateral axis."""
    return np.stack([np.sin(angle_rad), np.zeros_like(angle_rad), -np.cos(angle_rad)], axis=1)


def _const(n: int, x: float, y: float, z: float) -> np.ndarray:
    return np.broadcast_to(np.array([x, y, z], dtype=float), (n, 3))


def rotate_x(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([v[:, 0], c * v[:, 1] - s * v[:, 2], s * v[:, 1] + c * v[:, 2]], axis=1)


def rotate_y(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Positive angles tilt +z toward +x (a forward lean of an upright segment)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[:, 0] + s * v[:, 2], v[:, 1], -s * v[:, 0] + c * v[:, 2]], axis=1)


def rotate_z(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Positive angles turn +x toward +y (to the left, seen from above)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)
