"""Rigid-body geometry shared by the data augmentations, the shape generator and the simulator."""
from __future__ import annotations

import math

import numpy as np


def rotation_about(axis: int, angle: float) -> np.ndarray:
    """3x3 right-handed rotation by `angle` about coordinate axis 0, 1 or 2."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R
