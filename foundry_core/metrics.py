"""Accuracy and IoU metrics for classification and segmentation."""
from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Overall accuracy in %."""
    return 100.0 * float((pred == target).mean()) if len(target) else float("nan")


def class_mean_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean of per-class accuracies in % (classes present in target)."""
    accs = [(pred[target == c] == c).mean() for c in np.unique(target)]
    return 100.0 * float(np.mean(accs)) if accs else float("nan")


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = ground truth. Labels outside [0, K) are ignored."""
    ok = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    return np.bincount(num_classes * target[ok] + pred[ok], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU in % over classes that occur in ground truth or prediction."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return 100.0 * float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def instance_part_miou(pred: np.ndarray, target: np.ndarray, parts_of_shape: list[np.ndarray]) -> float:
    """ShapeNetPart instance mIoU in %: per shape, mean IoU over its category's parts (a part absent
    from both prediction and ground truth counts as IoU 1), averaged over shapes.

    pred, target (M, N); parts_of_shape[i] = part ids of shape i's category.
    """
    scores = []
    for p, t, parts in zip(pred, target, parts_of_shape):
        ious = []
        for part in parts:
            union = np.logical_or(p == part, t == part).sum()
            ious.append(1.0 if union == 0 else np.logical_and(p == part, t == part).sum() / union)
        scores.append(np.mean(ious))
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


def ground_consistency(xyz: np.ndarray, labels: np.ndarray, ground: int, radius: float = 12.0,
                       low: float = 0.15, high: float = 0.8) -> tuple[float, float]:
    """Label-free check of a LiDAR sweep's ground labels (real sweeps have no labels): among the
    labelled finite points within `radius` (m, horizontal) of the sensor, z0 = the 10th percentile of
    their heights (the road surface). Returns (% of the points below z0 + low labelled ground,
    % of the points above z0 + high not labelled ground). xyz (N, 3), labels (N,) (-1 = unlabelled)."""
    ok = (labels >= 0) & np.isfinite(xyz).all(1)
    xyz, labels = xyz[ok], labels[ok]
    near = np.hypot(xyz[:, 0], xyz[:, 1]) < radius
    if not near.any():
        return float("nan"), float("nan")
    z0 = np.percentile(xyz[near, 2], 10)
    is_low, is_high = near & (xyz[:, 2] < z0 + low), near & (xyz[:, 2] > z0 + high)
    return (100.0 * float((labels[is_low] == ground).mean()) if is_low.any() else float("nan"),
            100.0 * float((labels[is_high] != ground).mean()) if is_high.any() else float("nan"))
