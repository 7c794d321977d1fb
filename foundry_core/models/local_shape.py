"""LocalShape (ours): per-point descriptors of the surface around every point, for segmentation heads.

Tokens describe a group of k points around one of c centers; in a LiDAR sweep a token spans ~1 m, so
what tells a sphere from a box or a table top from the floor next to it is lost by the time a point
reads its interpolated token feature. LocalShape gives every labelled point the shape of its own
neighbourhood (its k nearest points among the M points that reach the network, itself included):

    linearity (l1 - l2) / l1, planarity (l2 - l3) / l1, scattering l3 / l1   (l1 >= l2 >= l3: the
    eigenvalues of the neighbourhood's covariance), |normal_z| (verticality of the least-variance
    axis), sqrt(l1) (extent, m), z - min z and max z - z of the neighbours (m)

    feats = local_shape(xyz, k=16)              # (M, 3) numpy -> (M, LOCAL_SHAPE_DIM) float32
    feats = local_shape_batch(points, k=16)     # (B, N, 3+) tensor -> (B, N, LOCAL_SHAPE_DIM) tensor

They are fixed functions of the cloud (no parameters, no gradient), computed with pykdtree and one
batched 3x3 eigen-decomposition on the CPU, outside exported graphs (an input of the graph).
"""
from __future__ import annotations

import numpy as np
import torch

LOCAL_SHAPE_DIM = 7
_EPS = 1e-12


def local_shape(xyz: np.ndarray, k: int = 16) -> np.ndarray:
    """xyz (M, 3) -> (M, LOCAL_SHAPE_DIM) float32 descriptors from each point's k nearest points."""
    from pykdtree.kdtree import KDTree

    xyz = np.ascontiguousarray(np.asarray(xyz)[:, :3], dtype=np.float32)
    m = xyz.shape[0]
    if k < 1:
        raise ValueError(f"local_shape: k must be >= 1, got {k}")
    if m == 0:
        return np.zeros((0, LOCAL_SHAPE_DIM), np.float32)
    take = min(int(k), m)
    _, idx = KDTree(xyz).query(xyz, k=take)
    nb = xyz[np.asarray(idx, dtype=np.int64).reshape(m, take)].astype(np.float64)     # (M, k, 3)
    centred = nb - nb.mean(1, keepdims=True)
    cov = np.einsum("mki,mkj->mij", centred, centred) / take
    evals, evecs = np.linalg.eigh(cov)                   # ascending: l3, l2, l1
    evals = np.maximum(evals, 0.0)
    l3, l2, l1 = evals[:, 0], evals[:, 1], evals[:, 2]
    top = np.maximum(l1, _EPS)
    z = xyz[:, 2].astype(np.float64)
    out = np.stack([(l1 - l2) / top, (l2 - l3) / top, l3 / top, np.abs(evecs[:, 2, 0]), np.sqrt(l1),
                    z - nb[:, :, 2].min(1), nb[:, :, 2].max(1) - z], axis=1)
    out[l1 <= _EPS, :4] = 0.0                             # a single point / all neighbours coincide
    return out.astype(np.float32)


def local_shape_batch(points: torch.Tensor, k: int = 16) -> torch.Tensor:
    """points (B, N, 3+) -> (B, N, LOCAL_SHAPE_DIM) on points' device and dtype (no gradient)."""
    xyz = points[..., :3].detach().to("cpu", torch.float32).numpy()
    feats = np.stack([local_shape(cloud, k) for cloud in xyz]) if len(xyz) else \
        np.zeros((0, points.shape[1], LOCAL_SHAPE_DIM), np.float32)
    return torch.from_numpy(feats).to(device=points.device, dtype=points.dtype)
