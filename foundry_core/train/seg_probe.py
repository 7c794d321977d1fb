"""Segmentation probe of a frozen backbone: a small per-point MLP on the backbone's output tokens
interpolated to the points (3-NN inverse distance) plus the cloud's max+mean pooled token.

The interpolation tables depend only on the token centers and the points, so they are computed
once (`PointGeometry`) and shared by every backbone evaluated on the same tokens; a probe then
trains in seconds on cached tokens (M, c, D), never running the backbone again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.backbone import pooled_features
from ..models.heads import interpolate, interpolation_weights
from ..metrics import confusion, instance_part_miou, mean_iou


@dataclass
class PointGeometry:
    """Interpolation tables and labels of M clouds of N points."""

    idx: torch.Tensor                 # (M, N, k) int64 nearest token centers of each point
    weight: torch.Tensor              # (M, N, k) inverse-distance weights (rows sum to 1)
    labels: torch.Tensor              # (M, N) int64 per-point class
    allowed: torch.Tensor | None      # (M, K) bool classes a cloud may contain (parts of its category)

    def __len__(self) -> int:
        return self.labels.shape[0]


@torch.no_grad()
def point_geometry(centers: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                   allowed: torch.Tensor | None = None, k: int = 3, chunk: int = 64) -> PointGeometry:
    """centers (M, c, 3), points (M, N, 3), labels (M, N) -> PointGeometry with the k nearest centers."""
    tables = [interpolation_weights(centers[i:i + chunk], points[i:i + chunk, :, :3], k)
              for i in range(0, centers.shape[0], chunk)]
    return PointGeometry(torch.cat([t[0] for t in tables]), torch.cat([t[1] for t in tables]), labels.long(), allowed)


def point_features(tokens: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """tokens (m, c, D), idx / weight (m, n, k) -> per-point features (m, n, 3D):
    interpolated token (D) next to the cloud's max + mean pooled token (2D)."""
    local = interpolate(tokens, idx, weight)
    return torch.cat([local, pooled_features(tokens).unsqueeze(1).expand(-1, idx.shape[1], -1)], dim=-1)


@dataclass
class SegProbeConfig:
    epochs: int = 30
    points_per_cloud: int = 256     # points drawn per cloud and step for training (all points are tested)
    hidden: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 16


def fit_seg_probe(train_tokens: torch.Tensor, train: PointGeometry, test_tokens: torch.Tensor,
                  test: PointGeometry, num_classes: int, cfg: SegProbeConfig, seed: int = 0) -> dict[str, float]:
    """Train the probe on (train_tokens (M, c, D), train) and score it on the test clouds.

    Returns mIoU over classes ("miou", %) and, with `allowed`, ShapeNetPart instance mIoU
    ("instance_miou", %, predictions restricted to the cloud's allowed classes)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_tokens, test_tokens = train_tokens.float(), test_tokens.float()
    m, n, _ = train.idx.shape
    # feature standardisation from a sample of training points
    sample = torch.randint(0, n, (m, min(n, 64)), generator=gen)
    f = point_features(train_tokens, _rows(train.idx, sample), _rows(train.weight, sample)).reshape(-1, 3 * train_tokens.shape[-1])
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    probe = nn.Sequential(nn.Linear(f.shape[1], cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, num_classes))
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-m // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    counts = torch.bincount(train.labels.reshape(-1).clamp_min(0), minlength=num_classes).float()
    class_w = (counts.sum() / counts.clamp_min(1)).sqrt()             # inverse-sqrt frequency weights
    loss_fn = nn.CrossEntropyLoss(weight=class_w / class_w.mean(), ignore_index=-1)
    p = min(cfg.points_per_cloud, n)
    for _ in range(cfg.epochs):
        order = torch.randperm(m, generator=gen)
        for i in range(0, m, cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            pick = torch.randint(0, n, (len(b), p), generator=gen)
            x = point_features(train_tokens[b], _rows(train.idx[b], pick), _rows(train.weight[b], pick))
            y = train.labels[b].gather(1, pick)
            loss = loss_fn(probe((x - mean) / std).reshape(-1, num_classes), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return score_seg_probe(lambda x: probe((x - mean) / std), test_tokens, test, num_classes, cfg.batch_size)


@torch.no_grad()
def score_seg_probe(probe, tokens: torch.Tensor, geo: PointGeometry, num_classes: int,
                    batch_size: int = 16) -> dict[str, float]:
    """mIoU (and instance mIoU with `geo.allowed`) of a per-point classifier on every test point."""
    preds = []
    for i in range(0, len(geo), batch_size):
        logits = probe(point_features(tokens[i:i + batch_size], geo.idx[i:i + batch_size], geo.weight[i:i + batch_size]))
        if geo.allowed is not None:
            logits = logits.masked_fill(~geo.allowed[i:i + batch_size, None, :], float("-inf"))
        preds.append(logits.argmax(-1))
    pred, gt = torch.cat(preds).numpy(), geo.labels.numpy()
    out = {"miou": mean_iou(confusion(pred.reshape(-1), gt.reshape(-1), num_classes))}
    if geo.allowed is not None:
        parts = [np.flatnonzero(a) for a in geo.allowed.numpy()]
        out["instance_miou"] = instance_part_miou(pred, gt, parts)
    return out


def _rows(t: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """t (m, N, ...) rows picked per cloud with pick (m, p) -> (m, p, ...)."""
    return t.gather(1, pick.view(*pick.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))
