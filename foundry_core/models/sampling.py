"""Farthest point sampling and k-nearest neighbours, batched torch paths plus fast CPU paths.

The torch paths are device-agnostic (CPU/CUDA) and exact. On CPU, clouds are routed to maintained
native libraries: fpsample (its vanilla kernel below FAST_FPS_MIN_POINTS, index for index equal to
the torch loop and ~3.5x faster at 64 x 1024 points; QuickFPS, exact FPS, above) and pykdtree
(kd-tree kNN, from FAST_KNN_MIN_POINTS: ~3.5x faster than the dense torch path at 1024 points).
"""
from __future__ import annotations

import numpy as np
import torch

FAST_FPS_MIN_POINTS = 4096   # on CPU, clouds at least this large use QuickFPS (smaller: vanilla fpsample)
FAST_KNN_MIN_POINTS = 256    # on CPU, clouds at least this large use pykdtree


def fps_torch(points: torch.Tensor, num_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """Exact farthest point sampling. points (B, N, 3), start_idx (B,) -> indices (B, S) int64."""
    b, n, _ = points.shape
    idx = torch.empty(b, num_samples, dtype=torch.long, device=points.device)
    dist = torch.full((b, n), float("inf"), dtype=points.dtype, device=points.device)
    last = start_idx.to(points.device).long()
    arange = torch.arange(b, device=points.device)
    for i in range(num_samples):
        idx[:, i] = last
        d = ((points - points[arange, last].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(-1)
    return idx


def fps_fpsample(points: torch.Tensor, num_samples: int, start_idx: torch.Tensor,
                 exact_start: bool = False) -> torch.Tensor:
    """FPS with the fpsample library, one cloud at a time. Same contract as :func:`fps_torch`.

    exact_start=True uses the vanilla kernel that honours start_idx (index-for-index equal to
    fps_torch); otherwise QuickFPS (bucket kd-line), which is exact FPS but ~10x faster on large clouds.
    """
    import fpsample

    pts = points.detach().to("cpu", torch.float32).numpy()
    starts = start_idx.cpu().numpy()
    out = np.empty((pts.shape[0], num_samples), dtype=np.int64)
    for i in range(pts.shape[0]):
        if exact_start:
            out[i] = fpsample.fps_sampling(pts[i], num_samples, start_idx=int(starts[i]))
        else:
            h = 3 if pts.shape[1] < 20_000 else (5 if pts.shape[1] < 100_000 else 7)
            out[i] = fpsample.bucket_fps_kdline_sampling(pts[i], num_samples, h=h, start_idx=int(starts[i]))
    return torch.from_numpy(out).to(points.device)


def farthest_point_sample(points: torch.Tensor, num_samples: int,
                          generator: torch.Generator | None = None,
                          start_idx: torch.Tensor | None = None,
                          method: str = "auto") -> torch.Tensor:
    """FPS of `num_samples` centers. points (B, N, 3) -> (B, S) indices.

    The start point is random (drawn from `generator`, so seedable) unless start_idx (B,) is given.
    method: "auto" (on CPU: fpsample QuickFPS for N >= FAST_FPS_MIN_POINTS, else fpsample_exact;
    elsewhere torch), "torch", "fpsample", "fpsample_exact". When N < S, indices repeat (sampling
    with replacement after all points are used).
    """
    b, n, _ = points.shape
    if n == 0:
        raise ValueError("farthest_point_sample: empty point cloud")
    if start_idx is None:
        start_idx = torch.randint(0, n, (b,), generator=generator, device="cpu")
    take = min(num_samples, n)
    if method == "auto":
        if points.device.type != "cpu":
            method = "torch"
        else:
            method = "fpsample" if n >= FAST_FPS_MIN_POINTS else "fpsample_exact"
    if method == "fpsample" and n < 64:  # QuickFPS needs 2**h <= N buckets; tiny clouds go exact
        method = "fpsample_exact"
    if method == "torch":
        idx = fps_torch(points, take, start_idx)
    elif method in ("fpsample", "fpsample_exact"):
        idx = fps_fpsample(points, take, start_idx, exact_start=method == "fpsample_exact")
    else:
        raise ValueError(f"unknown FPS method {method!r}; use auto, torch, fpsample or fpsample_exact")
    if take < num_samples:  # fewer points than centers: cycle through the FPS order
        rep = torch.arange(num_samples, device=idx.device) % take
        idx = idx[:, rep]
    return idx


def knn_torch(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Exact kNN by pairwise distances. points (B, N, 3), queries (B, M, 3) -> (B, M, k) indices,
    nearest first. Distances are computed explicitly (no matmul shortcut) so results are exact;
    cdist's direct mode builds no (B, M, N, 3) difference tensor (~3x faster than broadcasting)."""
    d = torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist")   # (B, M, N)
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def knn_kdtree(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """kNN with pykdtree, one cloud at a time. Same contract as :func:`knn_torch`."""
    from pykdtree.kdtree import KDTree

    pts = points.detach().to("cpu", torch.float32).numpy()
    qs = queries.detach().to("cpu", torch.float32).numpy()
    out = np.empty((pts.shape[0], qs.shape[1], k), dtype=np.int64)
    for i in range(pts.shape[0]):
        _, nn = KDTree(np.ascontiguousarray(pts[i])).query(np.ascontiguousarray(qs[i]), k=k)
        out[i] = nn.reshape(qs.shape[1], k)
    return torch.from_numpy(out).to(points.device)


def knn(points: torch.Tensor, queries: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """k nearest neighbours of each query among points: (B, N, 3), (B, M, 3) -> (B, M, k).

    When N < k the available neighbours are repeated cyclically (sampling with replacement),
    so every group still has k members.
    """
    n = points.shape[1]
    if n == 0:
        raise ValueError("knn: empty point cloud")
    take = min(k, n)
    if method == "auto":
        method = "kdtree" if (points.device.type == "cpu" and n >= FAST_KNN_MIN_POINTS) else "torch"
    if method == "torch":
        idx = knn_torch(points, queries, take)
    elif method == "kdtree":
        idx = knn_kdtree(points, queries, take)
    else:
        raise ValueError(f"unknown kNN method {method!r}; use auto, torch or kdtree")
    if take < k:
        idx = idx[..., torch.arange(k, device=idx.device) % take]
    return idx


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather. x (B, N, C), idx (B, ...) -> (B, ..., C)."""
    b = x.shape[0]
    flat = idx.reshape(b, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])
