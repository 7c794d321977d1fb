"""Geometry shared across the core: rigid-body rotations (data augmentations, the shape generator, the
simulator) and voxel grids (preprocessing, LocalShape supports)."""
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


def rotation_about_vector(axis: np.ndarray, angle: float) -> np.ndarray:
    """3x3 right-handed rotation by `angle` about the unit vector `axis` (Rodrigues)."""
    x, y, z = (float(v) for v in axis)
    K = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def voxel_keys(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """One int64 key per point identifying its voxel (xyz (M, 3) finite)."""
    q = np.floor(xyz.astype(np.float64) / voxel)
    q -= q.min(axis=0)
    q = q.astype(np.int64)
    dims = q.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2 ** 62:
        return (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    # astronomically sparse extent: fall back to unique rows (slower, still vectorised)
    return np.unique(q, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def voxel_select(xyz: np.ndarray, voxel: float, mode: str = "first") -> np.ndarray:
    """Indices (sorted ascending) of one point per occupied voxel."""
    keys = voxel_keys(xyz, voxel)
    if mode == "first":
        _, first = np.unique(keys, return_index=True)   # first occurrence of every key
        return np.sort(first)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    x64 = xyz.astype(np.float64)
    centroid = np.stack([np.bincount(inverse, x64[:, d], minlength=counts.size) for d in range(3)], 1)
    centroid /= counts[:, None]
    dist = ((x64 - centroid[inverse]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(keys)), dist, inverse))   # by voxel, then distance, then index
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.sort(order[starts])
