"""Frame preprocessing of the inference runtime: raw cloud (N, 3+F) -> the points the model sees.

Steps, all vectorised numpy (no Python loop over points):

1. non-finite rows (NaN / Inf in any channel given to the model) are dropped (``valid`` = False);
2. crop box and range gate (distance of xyz from the origin of the cloud's frame);
3. voxel downsampling: one point per occupied voxel, either the first point of the voxel in input
   order ("first") or the point nearest to the voxel centroid ("centroid");
4. a cap of ``max_points`` (input order kept, seeded): ``thinning: uniform`` a uniform random
   subset; ``thinning: range`` keeps point i with probability p_i proportional to r_i^2 (its squared
   distance from the sensor, the frame's origin: LiDAR density falls ~ 1/r^2), capped at 1 and
   normalised so that exactly max_points are kept (systematic sampling in a random order), so
   far points are thinned, not dropped;
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

from ..geometry import voxel_select
from ..typed_yaml import ConfigError


@dataclass
class PreprocessConfig:
    crop_box: list[float] | None = None     # [xmin, ymin, zmin, xmax, ymax, zmax] in the input frame
    max_range: float | None = None          # keep points with |xyz| <= max_range
    min_range: float | None = None          # keep points with |xyz| >= min_range (ego-vehicle / sensor body)
    voxel_size: float | None = None         # edge of the downsampling voxel; None = no voxel filter
    voxel_mode: Literal["first", "centroid"] = "first"
    max_points: int = 131072                # cap after the voxel filter (random subset, seeded)
    thinning: Literal["uniform", "range"] = "uniform"   # the cap's subset: uniform, or keep p ~ r^2
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
        if self.thinning not in ("uniform", "range"):
            raise ConfigError("preprocess.thinning must be 'uniform' or 'range'")
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


def range_keep_probability(r2: np.ndarray, k: int) -> np.ndarray:
    """Keep probabilities p (n,) = min(1, lam * w) with sum(p) = k (0 < k < n), w = r2 (n,) squared
    ranges floored at 1 mm^2 (points at the sensor can still be drawn). Water-filling: the t largest
    are capped at 1, t the smallest count for which the rest stays <= 1."""
    w = np.maximum(r2.astype(np.float64), 1e-6)
    s = np.sort(w)[::-1]                                   # descending
    t = np.arange(k)
    rest = np.cumsum(s[::-1])[::-1][t]                     # sum of s[t:]
    lam = (k - t) / rest
    first = int(np.argmax(lam * s[t] <= 1.0))              # exists: t = k - 1 always fits (n > k)
    return np.minimum(1.0, lam[first] * w)


def range_thinning(xyz: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of exactly k of the n > k points xyz (n, 3), point i kept with probability
    range_keep_probability (systematic sampling along a random permutation: one uniform offset,
    an interval of length p_i per point, a point is kept when its interval holds an integer)."""
    p = range_keep_probability((xyz.astype(np.float64) ** 2).sum(1), k)
    order = rng.permutation(p.size)
    cum = np.cumsum(p[order])
    cum *= k / cum[-1]
    cum[-1] = k
    hits = np.floor(cum + rng.uniform()).astype(np.int64)
    chosen = np.diff(hits, prepend=0) > 0
    if chosen.sum() < k:                                   # rounding put two integers in one interval
        rest = np.flatnonzero(~chosen)
        chosen[rest[np.argsort(-p[order][rest], kind="stable")[:k - int(chosen.sum())]]] = True
    return np.sort(order[chosen])


def cap_points(xyz: np.ndarray, cfg: PreprocessConfig, seed: int) -> np.ndarray:
    """Sorted indices of the max_points kept of xyz (n, 3), n > max_points (cfg.thinning)."""
    rng = np.random.default_rng(seed)
    if cfg.thinning == "range":
        return range_thinning(xyz, cfg.max_points, rng)
    return np.sort(rng.choice(xyz.shape[0], cfg.max_points, replace=False))


def rows_all(flags: np.ndarray) -> np.ndarray:
    """(N, C) bool -> (N,) bool: every column set (column-wise ANDs; numpy's all(axis=1) over a
    handful of columns is several times slower)."""
    out = flags[:, 0].copy()
    for j in range(1, flags.shape[1]):
        out &= flags[:, j]
    return out


def choose_num_centers(m: int, cfg: PreprocessConfig) -> int:
    if m == 0:
        return 0
    return int(min(max(int(round(m / cfg.points_per_center)), cfg.min_centers), cfg.max_centers))


def preprocess(points: np.ndarray, cfg: PreprocessConfig, seed: int = 0) -> Preprocessed:
    """Raw cloud (N, 3+F) (or organised (H, W, 3+F)) -> Preprocessed. See the module docstring."""
    t0 = time.perf_counter()
    cloud = as_cloud(points)
    valid = rows_all(np.isfinite(cloud))
    region = valid.copy()
    xyz_all = cloud[:, :3]
    if cfg.crop_box is not None:
        with np.errstate(invalid="ignore"):
            for axis in range(3):      # column by column: ~3x faster than an (N, 3) compare + all(axis=1)
                column = xyz_all[:, axis]
                region &= (column >= np.float64(cfg.crop_box[axis])) & (column <= np.float64(cfg.crop_box[axis + 3]))
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
        idx = idx[cap_points(cloud[idx, :3], cfg, seed)]
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
