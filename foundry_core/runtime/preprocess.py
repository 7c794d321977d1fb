"""Frame preprocessing of the inference runtime: raw cloud (N, 3+F) -> the points the model sees.

Steps, all vectorised numpy (no Python loop over points):

1. non-finite rows (NaN / Inf in any channel given to the model) are dropped (``valid`` = False);
2. crop box and range gate (distance of xyz from the origin of the cloud's frame);
3. voxel downsampling: one point per occupied voxel, either the first point of the voxel in input
   order ("first") or the point nearest to the voxel centroid ("centroid");
4. a cap of ``max_points``: a seeded uniform random subset (input order kept);
5. the number of token centers c = clamp(round(M / points_per_center), min_centers, max_centers);
6. optional unit-sphere normalisation (object-level models were trained on clouds centred at their
   mean and scaled to radius 1); ``center`` / ``scale`` undo it: x_input = x * scale + center.

An empty result (all points non-finite or cropped) is a valid outcome, not an error: M = 0 and
num_centers = 0; the predictor then labels every point -1.

Index bookkeeping: ``source_index`` (M,) maps every used point to its row in the input;
``in_region`` (N,) marks the finite points inside the crop box / range gate, i.e. the points that
could have been used (those of them not in ``source_index`` were removed by the voxel filter or
the cap and are labelled from their nearest used point by the predictor).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..typed_yaml import ConfigError


@dataclass
class PreprocessConfig:
    crop_box: list[float] | None = None     # [xmin, ymin, zmin, xmax, ymax, zmax] in the input frame
    max_range: float | None = None          # keep points with |xyz| <= max_range
    min_range: float | None = None          # keep points with |xyz| >= min_range (ego-vehicle / sensor body)
    voxel_size: float | None = None         # edge of the downsampling voxel; None = no voxel filter
    voxel_mode: Literal["first", "centroid"] = "first"
    max_points: int = 131072                # cap after the voxel filter (random subset, seeded)
    min_centers: int = 32
    max_centers: int = 1024
    points_per_center: float = 16.0         # c = clamp(round(M / points_per_center), min_centers, max_centers)
    normalize: Literal["unit_sphere", "none"] = "none"

    def __post_init__(self) -> None:
        if self.crop_box is not None:
            box = [float(v) for v in self.crop_box]
            if len(box) != 6 or any(lo > hi for lo, hi in zip(box[:3], box[3:])):
                raise ConfigError("preprocess.crop_box must be [xmin, ymin, zmin, xmax, ymax, zmax] with min <= max")
            self.crop_box = box
        for name in ("max_range", "min_range", "voxel_size"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ConfigError(f"preprocess.{name} must be a finite number >= 0 or null")
        if self.voxel_size is not None and self.voxel_size <= 0:
            raise ConfigError("preprocess.voxel_size must be > 0 (null disables the voxel filter)")
        if self.voxel_mode not in ("first", "centroid"):
            raise ConfigError("preprocess.voxel_mode must be 'first' or 'centroid'")
        if self.max_points < 1:
            raise ConfigError("preprocess.max_points must be >= 1")
        if not 1 <= self.min_centers <= self.max_centers:
            raise ConfigError("preprocess needs 1 <= min_centers <= max_centers")
        if not self.points_per_center > 0:
            raise ConfigError("preprocess.points_per_center must be > 0")
        if self.normalize not in ("unit_sphere", "none"):
            raise ConfigError("preprocess.normalize must be 'unit_sphere' or 'none'")


@dataclass
class Preprocessed:
    points: np.ndarray          # (M, 3+F) float32 used points (xyz normalised when configured, extra channels)
    source_index: np.ndarray    # (M,) int64 row of every used point in the input cloud
    valid: np.ndarray           # (N,) bool finite input rows
    in_region: np.ndarray       # (N,) bool finite rows inside the crop box / range gate
    num_centers: int            # c for this cloud (0 when M = 0)
    center: np.ndarray          # (3,) float64 normalisation offset (zeros without normalisation)
    scale: float                # normalisation scale (1 without normalisation)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]

    @property
    def extra(self) -> np.ndarray:
        return self.points[:, 3:]

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def to_input_frame(self, xyz: np.ndarray) -> np.ndarray:
        """Undo the normalisation: model-frame xyz (..., 3) -> input-frame xyz (float32)."""
        return (np.asarray(xyz, dtype=np.float64) * self.scale + self.center).astype(np.float32)


def as_cloud(points: np.ndarray) -> np.ndarray:
    """(N, C) or organised (H, W, C) -> (N, C) float array (organised clouds flattened row-major)."""
    arr = np.asarray(points)
    if arr.ndim == 3:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+F) or (H, W, 3+F), got shape {np.asarray(points).shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


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


def choose_num_centers(m: int, cfg: PreprocessConfig) -> int:
    if m == 0:
        return 0
    return int(min(max(int(round(m / cfg.points_per_center)), cfg.min_centers), cfg.max_centers))


def preprocess(points: np.ndarray, cfg: PreprocessConfig, seed: int = 0) -> Preprocessed:
    """Raw cloud (N, 3+F) (or organised (H, W, 3+F)) -> Preprocessed. See the module docstring."""
    t0 = time.perf_counter()
    cloud = as_cloud(points)
    valid = np.isfinite(cloud).all(axis=1)
    region = valid.copy()
    xyz_all = cloud[:, :3]
    if cfg.crop_box is not None:
        lo, hi = np.asarray(cfg.crop_box[:3]), np.asarray(cfg.crop_box[3:])
        with np.errstate(invalid="ignore"):
            region &= ((xyz_all >= lo) & (xyz_all <= hi)).all(axis=1)
    if cfg.max_range is not None or cfg.min_range is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            r2 = (xyz_all.astype(np.float64) ** 2).sum(axis=1)
            if cfg.max_range is not None:
                region &= r2 <= cfg.max_range ** 2
            if cfg.min_range is not None:
                region &= r2 >= cfg.min_range ** 2
    idx = np.flatnonzero(region).astype(np.int64)
    t1 = time.perf_counter()
    if cfg.voxel_size is not None and idx.size:
        idx = idx[voxel_select(cloud[idx, :3], cfg.voxel_size, cfg.voxel_mode)]
    t2 = time.perf_counter()
    if idx.size > cfg.max_points:
        rng = np.random.default_rng(seed)
        idx = np.sort(idx[rng.choice(idx.size, cfg.max_points, replace=False)])
    used = cloud[idx].astype(np.float32)
    center, scale = np.zeros(3), 1.0
    if cfg.normalize == "unit_sphere" and idx.size:
        center = used[:, :3].astype(np.float64).mean(axis=0)
        rel = used[:, :3].astype(np.float64) - center
        r = float(np.sqrt((rel ** 2).sum(axis=1)).max())
        scale = r if r > 0 else 1.0
        used[:, :3] = (rel / scale).astype(np.float32)
    t3 = time.perf_counter()
    return Preprocessed(points=np.ascontiguousarray(used), source_index=idx, valid=valid, in_region=region,
                        num_centers=choose_num_centers(int(idx.size), cfg), center=center, scale=scale,
                        timings_ms={"filter": (t1 - t0) * 1e3, "voxel": (t2 - t1) * 1e3,
                                    "cap_normalize": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3})
