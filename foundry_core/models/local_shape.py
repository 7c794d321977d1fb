"""LocalShape (ours): per-point descriptors of the surface around every point, for segmentation heads.

Tokens describe a group of k points around one of c centers; in a LiDAR sweep a token spans ~1 m, so
what tells a sphere from a box or a table top from the floor next to it is lost by the time a point
reads its interpolated token feature. LocalShape gives every labelled point the shape of its own
neighbourhood at one or more scales: its k nearest points among a support set, per scale

    voxel 0     the M points that reach the network (itself included): k points span less the denser
                the operating point (at 16k LiDAR points, 16 neighbours lie along one ring: "a line");
    voxel v     one point per occupied v-metre voxel of them (descriptors computed there; every point
                reads those of its nearest support point): about the same metres at every density, so
                richer operating points sharpen the descriptors instead of shrinking them.

Each scale gives the same seven numbers:

    linearity (l1 - l2) / l1, planarity (l2 - l3) / l1, scattering l3 / l1   (l1 >= l2 >= l3: the
    eigenvalues of the neighbourhood's covariance), |normal_z| (verticality of the least-variance
    axis), sqrt(l1) (extent, m), z - min z and max z - z of the neighbours (m); the three lengths are
    capped at METRIC_CAP_M = 1 m

    feats = local_shape(xyz, k=16, voxels=(0.1, 0.3))   # (M, 3) numpy -> (M, 2 * LOCAL_SHAPE_DIM) float32
    feats = local_shape_batch(points, 16, (0.1, 0.3))   # (B, N, 3+) tensor -> (B, N, 14) tensor

They are fixed functions of the cloud (no parameters, no gradient), computed with pykdtree and one
batched 3x3 eigen-decomposition on the CPU, outside exported graphs (an input of the graph).
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import voxel_select

LOCAL_SHAPE_DIM = 7     # descriptors per scale
METRIC_CAP_M = 1.0      # extent and heights are capped here (heavy tails would swamp the head's BatchNorm)
QUERY_CELL_M = 0.5      # the kNN queries run sorted by these cells (same result, fewer cache misses)
_EPS = 1e-12


def local_shape(xyz: np.ndarray, k: int = 16, voxels: tuple[float, ...] | list[float] = (0.0,)) -> np.ndarray:
    """xyz (M, 3) -> (M, LOCAL_SHAPE_DIM * len(voxels)) float32: one block of descriptors per scale (see
    the module docstring): voxel 0, from each point's k nearest points; voxel v > 0, from the k nearest
    support points of its nearest support point (one per occupied v-metre voxel)."""
    from pykdtree.kdtree import KDTree

    xyz = np.ascontiguousarray(np.asarray(xyz)[:, :3], dtype=np.float32)
    m = xyz.shape[0]
    if k < 1:
        raise ValueError(f"local_shape: k must be >= 1, got {k}")
    if not len(voxels) or min(voxels) < 0:
        raise ValueError(f"local_shape: voxels must be one or more sizes >= 0 (0: the points), got {voxels}")
    if m == 0:
        return np.zeros((0, LOCAL_SHAPE_DIM * len(voxels)), np.float32)
    cells = np.floor(xyz / np.float32(QUERY_CELL_M)).astype(np.int64)
    order = np.lexsort((cells[:, 2], cells[:, 1], cells[:, 0]))      # queries in space order: ~1.5x faster kNN
    xyz = xyz[order]
    feats = np.empty((m, LOCAL_SHAPE_DIM * len(voxels)), np.float32)
    for i, voxel in enumerate(voxels):
        support = xyz if voxel <= 0 else np.ascontiguousarray(xyz[voxel_select(xyz, float(voxel))])
        s, take = support.shape[0], min(int(k), support.shape[0])
        tree = KDTree(support, leafsize=32)
        idx = np.asarray(tree.query(support, k=take)[1], dtype=np.int64).reshape(s, take)
        desc = neighbourhood_descriptors(np.take(support, idx, axis=0) - support[:, None])   # (S, 7)
        if voxel > 0:                     # every point reads the descriptors of its support point
            desc = desc[np.asarray(tree.query(xyz, k=1)[1], dtype=np.int64).reshape(m)]
        feats[order, i * LOCAL_SHAPE_DIM:(i + 1) * LOCAL_SHAPE_DIM] = desc
    return feats


def neighbourhood_descriptors(rel: np.ndarray) -> np.ndarray:
    """rel (M, k, 3): every point's neighbours relative to it -> (M, LOCAL_SHAPE_DIM) float32."""
    take = rel.shape[1]
    mean = rel.sum(1) / np.float32(take)                                               # (M, 3)
    cov = (np.matmul(rel.transpose(0, 2, 1), rel) / take).astype(np.float64) - \
        mean[:, :, None].astype(np.float64) * mean[:, None, :]                          # (M, 3, 3)
    l1, l2, l3, normal_z = symmetric_eigen3(cov)
    top = np.maximum(l1, _EPS)
    out = np.stack([(l1 - l2) / top, (l2 - l3) / top, l3 / top, normal_z, np.sqrt(l1),
                    -rel[:, :, 2].min(1), rel[:, :, 2].max(1)], axis=1)
    np.minimum(out[:, 4:], METRIC_CAP_M, out=out[:, 4:])   # bounded: isolated far points have metres-wide neighbourhoods
    out[l1 <= _EPS, :4] = 0.0                             # a single point / all neighbours coincide
    return out.astype(np.float32)


def symmetric_eigen3(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form eigen-decomposition of symmetric 3x3 matrices (trigonometric method; ~20x faster than
    np.linalg.eigh on (M, 3, 3)): a (M, 3, 3) -> eigenvalues l1 >= l2 >= l3 (M,) each (clipped at 0) and
    |z| of the unit eigenvector of l3 (M,) (0 where it is undefined: a point, a line)."""
    a11, a22, a33 = a[:, 0, 0], a[:, 1, 1], a[:, 2, 2]
    a12, a13, a23 = a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]
    q = (a11 + a22 + a33) / 3.0
    p1 = a12 ** 2 + a13 ** 2 + a23 ** 2
    p = np.sqrt(((a11 - q) ** 2 + (a22 - q) ** 2 + (a33 - q) ** 2 + 2.0 * p1) / 6.0)
    safe = np.where(p > 1e-30, p, 1.0)
    b11, b22, b33 = (a11 - q) / safe, (a22 - q) / safe, (a33 - q) / safe
    b12, b13, b23 = a12 / safe, a13 / safe, a23 / safe
    det = b11 * (b22 * b33 - b23 ** 2) - b12 * (b12 * b33 - b23 * b13) + b13 * (b12 * b23 - b22 * b13)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    l1 = np.where(p > 1e-30, q + 2.0 * p * np.cos(phi), q)
    l3 = np.where(p > 1e-30, q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0), q)
    l2 = 3.0 * q - l1 - l3
    # eigenvector of l3: the longest cross product of two rows of (a - l3 I)
    r0 = np.stack([a11 - l3, a12, a13], 1)
    r1 = np.stack([a12, a22 - l3, a23], 1)
    r2 = np.stack([a13, a23, a33 - l3], 1)
    cands = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], 1)          # (M, 3, 3)
    norms = np.linalg.norm(cands, axis=2)
    best = norms.argmax(1)
    rows = np.arange(a.shape[0])
    vec, length = cands[rows, best], norms[rows, best]
    normal_z = np.where(length > 1e-30, np.abs(vec[:, 2]) / np.where(length > 1e-30, length, 1.0), 0.0)
    return np.maximum(l1, 0.0), np.maximum(l2, 0.0), np.maximum(l3, 0.0), normal_z


def local_shape_batch(points: torch.Tensor, k: int = 16, voxels: tuple[float, ...] | list[float] = (0.0,)
                      ) -> torch.Tensor:
    """points (B, N, 3+) -> (B, N, LOCAL_SHAPE_DIM * len(voxels)) on points' device and dtype (no gradient)."""
    xyz = points[..., :3].detach().to("cpu", torch.float32).numpy()
    feats = np.stack([local_shape(cloud, k, voxels) for cloud in xyz]) if len(xyz) else \
        np.zeros((0, points.shape[1], LOCAL_SHAPE_DIM * len(voxels)), np.float32)
    return torch.from_numpy(feats).to(device=points.device, dtype=points.dtype)
