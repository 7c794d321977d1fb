"""In-memory container every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetFormatError(RuntimeError):
    """A dataset is missing or malformed; the message names the expected layout."""


@dataclass
class ShapeSet:
    """A labelled collection of point clouds.

    points:  list of M arrays (N_i, 3+F) float32 (N_i may differ per cloud; extra channels F optional)
    labels:  (M,) int64 object/scene class per cloud (-1 when unknown)
    classes: class names, index = label
    seg:     optional list of M arrays (N_i,) int64 per-point labels (parts or scene semantics)
    seg_classes: optional names of the per-point labels
    category_of_seg: optional (num_seg_classes,) int64 object class owning each part label
    """

    points: list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    seg: list[np.ndarray] | None = None
    seg_classes: list[str] | None = None
    category_of_seg: np.ndarray | None = None
    name: str = "unnamed"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.points) != len(self.labels):
            raise DatasetFormatError(
                f"{self.name}: {len(self.points)} clouds but {len(self.labels)} labels")
        if self.seg is not None and len(self.seg) != len(self.points):
            raise DatasetFormatError(
                f"{self.name}: {len(self.points)} clouds but {len(self.seg)} segmentations")

    def __len__(self) -> int:
        return len(self.points)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: np.ndarray) -> "ShapeSet":
        """A new ShapeSet holding the clouds at `index` (classes are kept)."""
        index = np.asarray(index, dtype=np.int64)
        return ShapeSet(
            points=[self.points[i] for i in index],
            labels=self.labels[index],
            classes=list(self.classes),
            seg=None if self.seg is None else [self.seg[i] for i in index],
            seg_classes=self.seg_classes,
            category_of_seg=self.category_of_seg,
            name=self.name,
            meta=dict(self.meta),
        )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: (train_index, test_index); every class keeps >= 1 sample in train."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        n_test = min(n_test, len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
