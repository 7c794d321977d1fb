"""The two ways a Predictor runs the network on one preprocessed cloud, both -> NetworkOutput:

    TorchRunner  PyTorch eager: tokenizer, backbone.encode (budget applied), chunked segmentation
                 head (3-NN inverse-distance propagation in chunks of `head_chunk` points, so no
                 (M, c) matrix is built; the head MLP as BatchNorm-folded GEMMs) or the cls head
    GraphRunner  an exported graph (onnxruntime / TensorRT): FPS / kNN grouping and the nearest
                 centers here, the networks in the graph (runtime/export.py for its inputs)

Inputs of a call: pts (1, M, C) tensor on the device, xyz (M, 3) numpy, c centers, the FPS
generator, budget / fusion threshold (already resolved by the Predictor), the category and, when
they are computed elsewhere (frame_geometry.py: beside the network), the LocalShape descriptors.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch

from ..models.backbone import pooled_features
from ..models.heads import (FoldedPointMLP, SegmentationHead, TaskModel, interpolation_weights,
                            inverse_distance_weights, propagate_to_points)
from ..models.local_shape import local_shape
from ..models.sampling import FAST_FPS_MIN_POINTS
from ..models.tokenizer import PointTokenizer, Tokens
from .postprocess import nearest_rows, nearest_rows_with_distances, softmax_labels
from .types import NetworkOutput

#: () -> (M, F) LocalShape descriptors of the used points, or None (then the runner computes them)
PointFeatures = Callable[[], "np.ndarray | None"]
CUDA_KDTREE_MIN_POINTS = 8192     # on CUDA, clouds at least this large take pykdtree's kNN on the CPU
CPU_HEAD_CHUNK = 4096             # on CPU, the segmentation head runs at most this many points at a time


@contextlib.contextmanager
def cpu_libraries_for_large_clouds(tokenizer: PointTokenizer, points: torch.Tensor):
    """On CUDA, large clouds use the CPU libraries (fpsample, pykdtree) for FPS / kNN: the torch
    paths build (c, N) distance tensors. No change on CPU (the tokenizer's auto mode decides)."""
    if points.device.type == "cpu":
        yield
        return
    n = points.shape[1]
    saved = tokenizer.fps_method, tokenizer.knn_method
    tokenizer.fps_method = "fpsample" if n >= FAST_FPS_MIN_POINTS else "torch"
    tokenizer.knn_method = "kdtree" if n >= CUDA_KDTREE_MIN_POINTS else "torch"
    try:
        yield
    finally:
        tokenizer.fps_method, tokenizer.knn_method = saved


def tokenize(tokenizer: PointTokenizer, points: torch.Tensor, num_centers: int,
             generator: torch.Generator | None) -> Tokens:
    """tokenizer with c centers on points (B, N, C) (see cpu_libraries_for_large_clouds)."""
    with cpu_libraries_for_large_clouds(tokenizer, points):
        return tokenizer(points, num_groups=num_centers, generator=generator)


def point_shape(xyz: np.ndarray, k: int, voxels: Any, point_features: PointFeatures | None) -> np.ndarray:
    """(M, F) float32 LocalShape descriptors of xyz (M, 3): the ones point_features gives (computed
    beside the network), else computed here."""
    given = None if point_features is None else point_features()
    return local_shape(xyz, k, voxels) if given is None else given


def require_category(category: int | None) -> int:
    if category is None:
        raise ValueError("this part segmentation model needs the object category: "
                         "pass category= (index into the model's classes)")
    return int(category)


class TorchRunner:
    """PyTorch eager run of a TaskModel (see the module docstring)."""

    def __init__(self, model: TaskModel, device: torch.device, head_chunk: int, fold_head: bool = True,
                 embeddings: bool = True):
        self.backbone, self.head, self.device = model.backbone, model.head, device
        self.embeddings = embeddings      # False: no output tokens (a student's CAU never runs for a segmentation head)
        self.head_chunk = int(head_chunk)
        self.segmentation = isinstance(self.head, SegmentationHead)
        self.folded_mlp: FoldedPointMLP | None = self.head.folded_mlp() if self.segmentation and fold_head else None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, pts: torch.Tensor, xyz: np.ndarray, c: int, gen: torch.Generator, budget: int | None,
                 threshold: float | None, category: int | None,
                 point_features: PointFeatures | None = None) -> NetworkOutput:
        tok = tokenize(self.backbone.tokenizer, pts, c, gen)
        self._sync()
        tokenized_at = time.perf_counter()
        out = self.backbone.encode(tok, budget=budget, fusion_threshold=threshold, points=pts, generator=gen)
        self._sync()
        encoded_at = time.perf_counter()
        centers = tok.centers[0].float().cpu().numpy()
        m = xyz.shape[0]
        if self.segmentation:
            dist, nn_idx = nearest_rows_with_distances(centers, xyz, 3)
            labels, conf = self._segment(out, tok, pts, xyz, nn_idx, category, dist, point_features)
            nearest = nn_idx[:, 0]
        else:
            cat = None if category is None else torch.tensor([int(category)], device=self.device)
            lab, p = softmax_labels(self.head(out, pts, cat).float()[0].cpu().numpy())
            labels, conf = np.full(m, int(lab), dtype=np.int32), np.full(m, float(p), dtype=np.float32)
            nearest = nearest_rows(centers, xyz, 1)[:, 0]
        self._sync()
        return NetworkOutput(labels=labels, confidence=conf, centers=centers,
                             token_segments=out.segments[0].cpu().numpy().astype(np.int32),
                             embeddings=(out.last[0].float().cpu().numpy() if self.embeddings else
                                         np.zeros((0, int(self.backbone.dim)), np.float32)),
                             tokens_in_encoder=int(out.tokens_in_encoder.max().item()),
                             group_idx=tok.group_idx[0].cpu().numpy(), nearest=nearest,
                             tokenized_at=tokenized_at, encoded_at=encoded_at)

    def _segment(self, out: Any, tok: Tokens, pts: torch.Tensor, xyz_np: np.ndarray, nn_idx: np.ndarray,
                 category: int | None, dist: np.ndarray | None = None,
                 point_features: PointFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Chunked segmentation head on the used points -> (labels (M,) int32, confidence (M,) float32).
        xyz_np (M, 3): the points as numpy; nn_idx / dist (M, 3): every point's nearest centers and their
        distances (kd-tree);
        point_features: the LocalShape descriptors (M, F) when already computed (else computed here).

        Folded head: the first layer and its global term run on the c tokens (table (c, H0)), the
        interpolation to the points is one weighted embedding_bag sum (no (m, 3, H0) gather), and
        the weights come from the kd-tree's distances (not recomputed)."""
        head: SegmentationHead = self.head
        feats = head.token_features(out)                            # (1, c, D)
        glob = pooled_features(feats)                               # (1, 2D)
        if head.category is not None:
            cat = torch.tensor([require_category(category)], device=self.device)
            glob = torch.cat([glob, head.category(cat)], dim=-1)
        centers, xyz = tok.centers, pts[:, :, :3]
        idx = torch.from_numpy(nn_idx).to(self.device).unsqueeze(0)   # (1, M, 3)
        m, step = xyz.shape[1], self.head_chunk
        if self.device.type == "cpu":     # chunks whose activations stay in the caches (~25 % faster)
            step = min(step, CPU_HEAD_CHUNK)
        labels = np.empty(m, dtype=np.int32)
        conf = np.empty(m, dtype=np.float32)
        folded = self.folded_mlp
        if folded is not None:            # first layer on the c tokens, interpolated (same function)
            table = folded.project_tokens(feats[0]) + folded.global_bias(glob[0])          # (c, H0)
            if dist is None:
                weights = interpolation_weights(centers, xyz, idx.shape[-1], idx)[1][0]
            else:
                weights = inverse_distance_weights(torch.from_numpy(dist).to(self.device).square())
            weights = weights.to(table.dtype)
        shape = None
        if head.local_shape_k:                                                              # (1, M, 7 per scale)
            shape = torch.from_numpy(point_shape(xyz_np, head.local_shape_k, head.local_shape_voxels, point_features)
                                     ).to(device=xyz.device, dtype=xyz.dtype).unsqueeze(0)
        for s in range(0, m, step):
            e = min(s + step, m)
            geometry = None if not head.geometry_dim else head.geometry_inputs(
                centers, xyz[:, s:e], idx[:, s:e], None if shape is None else shape[:, s:e])[0]       # (m, G)
            if folded is not None:
                first = torch.nn.functional.embedding_bag(idx[0, s:e], table, per_sample_weights=weights[s:e],
                                                          mode="sum")                                    # (m, H0)
                if geometry is not None:
                    first.add_(folded.geometry(geometry))
                logits = folded(first).float()
            else:
                per_point = propagate_to_points(feats, centers, xyz[:, s:e], idx=idx[:, s:e])[0]   # (m, D)
                parts = [per_point, glob.expand(e - s, -1)] + ([geometry] if geometry is not None else [])
                x = torch.cat(parts, dim=-1)
                logits = head.mlp(x.t().unsqueeze(0)).squeeze(0).t().float()
            p, lab = torch.softmax(logits, -1).max(-1)
            labels[s:e] = lab.cpu().numpy()
            conf[s:e] = p.cpu().numpy()
        return labels, conf


class GraphRunner:
    """An exported graph run through `graph` (OnnxRunner / TensorRTRunner: feeds -> outputs);
    grouping and nearest centers here (see the module docstring)."""

    def __init__(self, tokenizer: PointTokenizer, graph: Any, signature: Any):
        self.tokenizer, self.graph, self.sig = tokenizer, graph, signature

    def __call__(self, pts: torch.Tensor, xyz: np.ndarray, c: int, gen: torch.Generator, budget: int | None,
                 threshold: float | None, category: int | None,
                 point_features: PointFeatures | None = None) -> NetworkOutput:
        with cpu_libraries_for_large_clouds(self.tokenizer, pts):
            centers, _, gidx = self.tokenizer.group(pts, c, gen)
        groups = self.tokenizer.relative_groups(pts, centers, gidx)
        centers_np = centers[0].float().cpu().numpy()
        nn_idx = nearest_rows(centers_np, xyz, 3)
        if nn_idx.shape[1] < 3:                                       # fewer than 3 centers: repeat the last
            nn_idx = np.concatenate([nn_idx, np.repeat(nn_idx[:, -1:], 3 - nn_idx.shape[1], 1)], 1)
        feeds = {"groups": groups.float().cpu().numpy(), "centers": centers_np[None]}
        if self.sig.gated:
            feeds["slots"] = np.arange(c if budget is None else min(budget, c), dtype=np.int64)
            feeds["fusion_threshold"] = np.array([threshold], dtype=np.float32)   # always set for gated students
        if self.sig.segmentation:
            feeds["points"] = np.ascontiguousarray(xyz[None], dtype=np.float32)
            feeds["nn_idx"] = nn_idx[None]
        if self.sig.local_shape_k:
            feeds["point_features"] = point_shape(xyz, self.sig.local_shape_k, self.sig.local_shape_voxels,
                                                  point_features)[None]
        if self.sig.category:
            feeds["category"] = np.array([require_category(category)], dtype=np.int64)
        tokenized_at = time.perf_counter()
        out = self.graph(feeds)
        encoded_at = time.perf_counter()
        labels, conf = softmax_labels(out["logits"][0])
        if not self.sig.segmentation:
            m = xyz.shape[0]
            labels, conf = np.full(m, int(labels), dtype=np.int32), np.full(m, float(conf), dtype=np.float32)
        return NetworkOutput(labels=labels, confidence=conf, centers=centers_np,
                             token_segments=out["segments"][0].astype(np.int32),
                             embeddings=out["embeddings"][0].astype(np.float32),
                             tokens_in_encoder=int(out["tokens_in_encoder"].max()),
                             group_idx=gidx[0].cpu().numpy(), nearest=nn_idx[:, 0],
                             tokenized_at=tokenized_at, encoded_at=encoded_at)
