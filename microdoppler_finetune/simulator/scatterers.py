"""Body segments as ellipsoid scatterers and their radar cross section.

Each of the 16 segments between the model's joints is an ellipsoid centred on the segment's midpoint, its
long semi-axis c along the segment (half the segment length) and semi-axes a (front-back) and b
(left-right) set by the body girth. Its RCS seen from a direction with polar angle theta (from the long
axis) and azimuth phi (from the a axis) is the physical-optics ellipsoid formula

    sigma = pi a^2 b^2 c^2 / (a^2 sin^2(theta) cos^2(phi) + b^2 sin^2(theta) sin^2(phi) + c^2 cos^2(theta))^2.

The direction cosines u.e_a = sin(theta) cos(phi), u.e_b = sin(theta) sin(phi), u.e_c = cos(theta) are
computed directly from vectors, so no angles are needed in the vectorised path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

# (name, start joint, end joint, a, b) with a/b in metres for girth 1.0; c is half the segment's length.
# Radii follow the usual values of Chen-style simulations for an adult.
SEGMENTS = (
    ("head", "neck", "head", 0.10, 0.09),
    ("torso", "base", "neck", 0.15, 0.18),
    ("l_shoulder", "neck", "l_shoulder", 0.06, 0.06),
    ("r_shoulder", "neck", "r_shoulder", 0.06, 0.06),
    ("l_upper_arm", "l_shoulder", "l_elbow", 0.05, 0.05),
    ("r_upper_arm", "r_shoulder", "r_elbow", 0.05, 0.05),
    ("l_lower_arm", "l_elbow", "l_hand", 0.04, 0.04),
    ("r_lower_arm", "r_elbow", "r_hand", 0.04, 0.04),
    ("l_hip", "base", "l_hip", 0.07, 0.07),
    ("r_hip", "base", "r_hip", 0.07, 0.07),
    ("l_upper_leg", "l_hip", "l_knee", 0.075, 0.075),
    ("r_upper_leg", "r_hip", "r_knee", 0.075, 0.075),
    ("l_lower_leg", "l_knee", "l_ankle", 0.055, 0.055),
    ("r_lower_leg", "r_knee", "r_ankle", 0.055, 0.055),
    ("l_foot", "l_ankle", "l_toe", 0.045, 0.04),
    ("r_foot", "r_ankle", "r_toe", 0.045, 0.04),
)
SEGMENT_NAMES = tuple(s[0] for s in SEGMENTS)


def ellipsoid_rcs(a: float, b: float, c: float, theta, phi) -> np.ndarray:
    """RCS (m^2) of an ellipsoid with semi-axes a, b, c seen at polar angle theta / azimuth phi (radians)."""
    theta, phi = np.asarray(theta, dtype=float), np.asarray(phi, dtype=float)
    st, ct = np.sin(theta), np.cos(theta)
    return ellipsoid_rcs_from_cosines(a, b, c, st * np.cos(phi), st * np.sin(phi), ct)


def ellipsoid_rcs_from_cosines(a, b, c, cos_a, cos_b, cos_c) -> np.ndarray:
    """Same formula from the direction cosines of the line of sight on the a, b and c axes."""
    denom = (a * a * cos_a * cos_a + b * b * cos_b * cos_b + c * c * cos_c * cos_c) ** 2
    return np.pi * (a * b * c) ** 2 / np.maximum(denom, 1e-30)


@dataclass
class Scatterer:
    """One ellipsoid: centre and long-axis direction per sample (N, 3), semi-axes, and a fixed RCS gain."""

    name: str
    centre: np.ndarray
    axis: np.ndarray  # unit vector along c
    a: float
    b: float
    c: float
    gain: float = 1.0  # multiplies the RCS (e.g. a bag's different material)


# Limbs are long compared with their width: points along them move at different speeds (slow near the
# hip or shoulder, fast at the foot or hand), which fills the micro-Doppler envelope between the joint
# traces. Each limb is therefore split into equal sub-ellipsoids along its length.
LIMB_PARTS = 3
_UNSPLIT = ("head", "torso", "l_shoulder", "r_shoulder", "l_hip", "r_hip")


def body_scatterers(joints: Dict[str, np.ndarray], girth: float = 1.0, torso_girth_scale: float = 1.0,
                    limb_parts: int = LIMB_PARTS) -> List[Scatterer]:
    """The 16 segment ellipsoids of one walker from its joint positions (body or world frame); limbs are
    split into ``limb_parts`` sub-ellipsoids that keep the segment's name."""
    out = []
    for name, start, end, a, b in SEGMENTS:
        p0, p1 = joints[start], joints[end]
        vec = p1 - p0
        length = np.linalg.norm(vec, axis=1, keepdims=True)
        axis = vec / np.maximum(length, 1e-9)
        scale = girth * (torso_girth_scale if name == "torso" else 1.0)
        parts = 1 if name in _UNSPLIT else limb_parts
        half_length = 0.5 * float(np.mean(length)) / parts
        for i in range(parts):
            centre = p0 + ((i + 0.5) / parts) * vec
            out.append(Scatterer(name, centre, axis, a * scale, b * scale, half_length))
    return out


def scatterer_rcs(scatterer: Scatterer, line_of_sight: np.ndarray, lateral: Optional[np.ndarray] = None) -> np.ndarray:
    """RCS per sample. ``line_of_sight``: unit vectors (N, 3) toward the radar; ``lateral``: the body's
    left-right direction (N, 3), which orients the b axis of non-round ellipsoids."""
    cos_c = np.einsum("ij,ij->i", line_of_sight, scatterer.axis)
    if scatterer.a == scatterer.b or lateral is None:
        # Round cross-section: only the angle to the long axis matters.
        perp2 = np.clip(1.0 - cos_c * cos_c, 0.0, 1.0)
        denom = (scatterer.a ** 2 * perp2 + scatterer.c ** 2 * cos_c * cos_c) ** 2
        return scatterer.gain * np.pi * (scatterer.a * scatterer.a * scatterer.c) ** 2 / np.maximum(denom, 1e-30)
    # b axis: the lateral direction made perpendicular to the long axis; a axis completes the frame.
    e_b = lateral - np.einsum("ij,ij->i", lateral, scatterer.axis)[:, None] * scatterer.axis
    e_b /= np.maximum(np.linalg.norm(e_b, axis=1, keepdims=True), 1e-9)
    e_a = np.cross(e_b, scatterer.axis)
    cos_a = np.einsum("ij,ij->i", line_of_sight, e_a)
    cos_b = np.einsum("ij,ij->i", line_of_sight, e_b)
    return scatterer.gain * ellipsoid_rcs_from_cosines(scatterer.a, scatterer.b, scatterer.c, cos_a, cos_b, cos_c)


def carried_object(name: str, centre: np.ndarray, axis: np.ndarray, a: float, b: float, c: float,
                   gain: float = 1.0) -> Scatterer:
    """An extra ellipsoid that moves with the body (backpack, bag, phone)."""
    axis = axis / np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
    return Scatterer(name, centre, axis, a, b, c, gain)
