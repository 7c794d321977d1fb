"""Poses and frame conventions of the simulator.

World frame: z up, ground plane at z = 0, scenes centred on the origin.
A pose is a (4, 4) float64 homogeneous transform ``parent_from_child`` (p_parent = T @ p_child).

* base frame   the robot: origin on the ground, x forward, y left, z up (REP 103)
* lidar frame  the base frame raised by ``LidarConfig.mount_height``
* camera optical frame  x right, y down, z forward (REP 103 ``*_optical_frame``), at
  ``DepthCameraConfig.mount_height`` above the base, pitched down by ``pitch_deg``
"""
from __future__ import annotations

import numpy as np

from ..geometry import rotation_about

# camera optical frame -> camera body frame (x forward, y left, z up)
BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0],
                              [-1.0, 0.0, 0.0],
                              [0.0, -1.0, 0.0]])


def planar_pose(x: float = 0.0, y: float = 0.0, yaw: float = 0.0, z: float = 0.0) -> np.ndarray:
    """(4, 4) pose translated to (x, y, z) and rotated by yaw (rad) about z."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_about(2, yaw)
    pose[:3, 3] = (x, y, z)
    return pose


def as_pose(pose) -> np.ndarray:
    """A (4, 4) float64 pose from a (4, 4) array or an (x, y, yaw) tuple."""
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape == (4, 4):
        return arr
    if arr.shape == (3,):
        return planar_pose(float(arr[0]), float(arr[1]), float(arr[2]))
    raise ValueError(f"pose must be a (4, 4) transform or (x, y, yaw), got shape {arr.shape}")


def rotate(vectors: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """vectors (..., 3) rotated by the (3, 3) matrix rot, same dtype (no BLAS threads: einsum)."""
    return np.einsum("...j,ij->...i", vectors, rot.astype(vectors.dtype))


def transform_points(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points (..., 3) mapped by the (4, 4) pose, same dtype."""
    return rotate(points, pose[:3, :3]) + pose[:3, 3].astype(points.dtype)
