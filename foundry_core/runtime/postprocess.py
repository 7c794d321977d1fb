"""Postprocessing: the network's answers on the M used points -> one answer for each of the N input
rows (the mirror of preprocess.py; no torch).

* used points: their own prediction;
* finite points inside the crop box / range gate removed by the voxel filter or the max_points cap:
  label, confidence and segment of their nearest used point (pykdtree, input frame);
* non-finite points and finite points outside the crop box / range gate: label -1, confidence 0,
  segment -1 (the model never saw them; -1 means "no prediction", not a class).

Segments: the SuperToken id of the token whose kNN group holds the point (the group with the
nearest center when several groups hold it; points in no group take the nearest center's token).
"""
from __future__ import annotations

import numpy as np

from .preprocess import Preprocessed
from .types import NetworkOutput


def softmax_labels(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logits (..., K) -> (argmax int32 (...), its softmax probability float32 (...))."""
    z = logits.astype(np.float32) - logits.max(-1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(-1, keepdims=True)
    return prob.argmax(-1).astype(np.int32), prob.max(-1).astype(np.float32)


def point_tokens(group_idx: np.ndarray, xyz: np.ndarray, centers: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Token of every used point (M,): the group holding it with the nearest center, else `nearest`.
    group_idx (c, k) into the M points, xyz (M, 3), centers (c, 3), nearest (M,)."""
    c, k = group_idx.shape
    members = group_idx.reshape(-1)
    token = np.repeat(np.arange(c), k)
    d = ((xyz[members].astype(np.float64) - centers[token].astype(np.float64)) ** 2).sum(1)
    order = np.lexsort((token, d, members))
    m_sorted = members[order]
    first = np.ones(m_sorted.size, dtype=bool)
    first[1:] = m_sorted[1:] != m_sorted[:-1]
    out = np.asarray(nearest, dtype=np.int64).copy()
    out[m_sorted[first]] = token[order][first]
    return out


def nearest_rows(reference: np.ndarray, queries: np.ndarray, k: int = 1) -> np.ndarray:
    """(Q, k) int64 indices of the k nearest reference rows of every query (pykdtree, xyz only,
    nearest first; k is capped at the reference count)."""
    return nearest_rows_with_distances(reference, queries, k)[1]


def nearest_rows_with_distances(reference: np.ndarray, queries: np.ndarray, k: int = 1
                                ) -> tuple[np.ndarray, np.ndarray]:
    """nearest_rows and the Euclidean distances the kd-tree found with them: (dist (Q, k) float32,
    idx (Q, k) int64), so callers that need both never recompute them."""
    from pykdtree.kdtree import KDTree
    k = min(k, reference.shape[0])
    dist, idx = KDTree(np.ascontiguousarray(reference[:, :3], dtype=np.float32)).query(
        np.ascontiguousarray(queries[:, :3], dtype=np.float32), k=k)
    q = queries.shape[0]
    return dist.reshape(q, k).astype(np.float32, copy=False), idx.reshape(q, k).astype(np.int64)


class FillQueries:
    """The fill of one frame as independent slices: rows (R,) the in-region rows the voxel filter or
    the cap removed, a kd-tree over the used points (input frame; float64, exact and ~5 % faster than
    float32 here: scripts/bench_fill.py), slice i -> the nearest used point of its rows
    (frame_geometry.py queries the slices on two threads)."""

    def __init__(self, cloud: np.ndarray, pre: Preprocessed, chunks: int = 1):
        from pykdtree.kdtree import KDTree

        self.cloud, self.rows = cloud, removed_rows(pre)
        self.tree = KDTree(np.ascontiguousarray(cloud[pre.source_index, :3], dtype=np.float64)) \
            if self.rows.size else None
        self.bounds = np.linspace(0, self.rows.size, max(1, min(int(chunks), self.rows.size)) + 1).astype(np.int64)

    @property
    def num_slices(self) -> int:
        return 0 if self.tree is None else len(self.bounds) - 1

    def query(self, i: int) -> np.ndarray:
        """(rows in slice i,) int64 index into the used points of each row's nearest used point."""
        rows = self.rows[self.bounds[i]:self.bounds[i + 1]]
        queries = np.ascontiguousarray(self.cloud[rows, :3], dtype=np.float64)
        return np.asarray(self.tree.query(queries, k=1)[1], dtype=np.int64).reshape(rows.size)


def fill_from_used(cloud: np.ndarray, pre: Preprocessed) -> tuple[np.ndarray, np.ndarray]:
    """cloud (N, C) and its preprocessing -> (rows (R,) int64: the in-region rows the voxel filter or
    the cap removed, (R,) int64: index into the used points of each row's nearest used point; input
    frame, pykdtree). FillQueries in one slice."""
    queries = FillQueries(cloud, pre)
    return queries.rows, (queries.query(0) if queries.num_slices else np.zeros(0, np.int64))


def removed_rows(pre: Preprocessed) -> np.ndarray:
    """(R,) int64 rows inside the crop box / range gate that the voxel filter or the cap removed."""
    removed = pre.in_region.copy()
    removed[pre.source_index] = False
    return np.flatnonzero(removed)


def postprocess(cloud: np.ndarray, pre: Preprocessed, net: NetworkOutput,
                fill: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cloud (N, C) as given, its preprocessing and the network's output on the used points ->
    labels (N,) int32, confidence (N,) float32, segments (N,) int32 (see the module docstring).
    fill: (removed rows (R,), nearest used point of each (R,)) when already computed
    (fill_from_used, e.g. run beside the network by frame_geometry), else computed here."""
    n = cloud.shape[0]
    seg_used = net.token_segments[point_tokens(net.group_idx, pre.xyz, net.centers, net.nearest)]
    labels = np.full(n, -1, dtype=np.int32)
    confidence = np.zeros(n, dtype=np.float32)
    segments = np.full(n, -1, dtype=np.int32)
    used = pre.source_index
    labels[used], confidence[used], segments[used] = net.labels, net.confidence, seg_used
    ridx, nn_used = fill_from_used(cloud, pre) if fill is None else fill
    if ridx.size:
        labels[ridx], confidence[ridx], segments[ridx] = net.labels[nn_used], net.confidence[nn_used], seg_used[nn_used]
    return labels, confidence, segments
