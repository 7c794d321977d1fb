"""torch Dataset over a ShapeSet: fixed-size resampling, augmentation, reproducible randomness."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import Compose
from .shapeset import ShapeSet


class PointCloudDataset(Dataset):
    """Items are dicts: ``points`` float32 (num_points, 3+F), ``label`` int64 scalar and, with
    ``with_seg``, ``seg`` int64 (num_points,) and ``category`` int64 scalar (the object class).

    Each cloud first loses its non-finite rows, then is resampled to num_points (a random
    subset without replacement when larger; all points plus extra ones drawn with replacement
    when smaller), then augmented.

    Randomness: item i uses ``np.random.default_rng([seed, epoch, i])`` in training mode and
    ``np.random.default_rng([seed, i])`` in eval mode, so reruns (and DataLoader workers) are
    reproducible and ``set_epoch`` changes the training draws.  ``train`` defaults to
    ``augment is not None``; in eval mode the subset is the first num_points of a fixed
    seeded permutation, identical for every epoch.
    """

    def __init__(self, shapes: ShapeSet, num_points: int, augment: Compose | None = None, seed: int = 0,
                 with_seg: bool = False, train: bool | None = None):
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        if with_seg and shapes.seg is None:
            raise ValueError(f"{shapes.name}: with_seg=True but the ShapeSet has no per-point labels")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.shapes = shapes
        self.num_points = int(num_points)
        self.augment = augment
        self.seed = int(seed)
        self.with_seg = with_seg
        self.train = augment is not None if train is None else bool(train)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws __getitem__ uses (training mode only)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def num_classes(self) -> int:
        return self.shapes.num_classes

    def rng_for(self, index: int) -> np.random.Generator:
        key = [self.seed, self.epoch, index] if self.train else [self.seed, index]
        return np.random.default_rng(key)

    def resample_index(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices (num_points,) into a cloud of n finite points."""
        k = self.num_points
        perm = rng.permutation(n)
        if n >= k:
            return perm[:k]
        return np.concatenate([perm, rng.integers(0, n, size=k - n)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clouds")
        pts = np.asarray(self.shapes.points[index])
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"{self.shapes.name}: cloud {index} has shape {pts.shape}, expected (N, 3+F)")
        seg = np.asarray(self.shapes.seg[index]) if self.with_seg else None
        finite = np.isfinite(pts).all(axis=1)
        if not finite.any():
            raise ValueError(f"{self.shapes.name}: cloud {index} has no finite points ({len(pts)} rows)")
        if not finite.all():
            pts = pts[finite]
            seg = None if seg is None else seg[finite]
        rng = self.rng_for(index)
        idx = self.resample_index(len(pts), rng)
        pts = pts[idx].astype(np.float32)
        seg = None if seg is None else seg[idx]
        if self.augment is not None:
            pts, seg = self.augment(pts, rng, seg)
        label = int(self.shapes.labels[index])
        item = {
            "points": torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)),
            "label": torch.tensor(label, dtype=torch.int64),
        }
        if self.with_seg:
            item["seg"] = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int64))
            item["category"] = torch.tensor(label, dtype=torch.int64)
        return item
