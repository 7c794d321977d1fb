"""Distilling a tokenizer alone: a student tokenizer's group encoder learns the teacher tokenizer's
tokens on the same groups (the initialisation of student.tokenizer.init_epochs, before the main
distillation loop adds the same token-level loss to the reconstruction loss).

    loss = SmoothL1(student_tokenizer.encoder(G), teacher_tokenizer.encoder(G))    G (B, c, k, C)

group_scale [lo, hi]: the xyz of every group is first scaled by its own log-uniform factor in [lo, hi].

Only the group encoder is trained: the positional embedding is the teacher's copy and the grouping
(FPS + kNN) is shared, so the two tokenizers differ in nothing else.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..models.tokenizer import PointTokenizer


def distill_tokenizer(student: PointTokenizer, teacher: PointTokenizer, dataset: Dataset, epochs: int,
                      lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                      log_path: str | Path | None = None,
                      group_scale: list[float] | None = None) -> list[dict[str, float]]:
    """Train student.encoder for `epochs` epochs (AdamW, cosine lr) on dataset items' "points"
    (N, C); returns (and writes to log_path as JSON) the mean token loss of every epoch."""
    device = next(teacher.parameters()).device
    student.to(device)
    teacher.eval()
    params = [p for p in student.encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student tokenizer's group encoder has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
    total = max(1, epochs * len(loader))
    history: list[dict[str, float]] = []
    step = 0
    was_training = student.training
    student.train()
    for epoch in range(epochs):
        losses = []
        for batch in loader:
            pts = batch["points"].to(device)
            with torch.no_grad():
                centers, _, gidx = student.group(pts, generator=gen)
                groups = student.relative_groups(pts, centers, gidx)
                if group_scale is not None:
                    groups = scale_groups(groups, group_scale, gen)
                target = teacher.encoder(groups)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.smooth_l1_loss(student.encoder(groups), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        history.append({"epoch": epoch + 1, "token_loss": sum(losses) / max(1, len(losses))})
        print(f"[distill] tokenizer init epoch {epoch + 1}/{epochs} token_loss={history[-1]['token_loss']:.4g}",
              flush=True)
    student.train(was_training)
    if log_path is not None:
        Path(log_path).write_text(json.dumps(history, indent=2))
    return history


def scale_groups(groups: torch.Tensor, lo_hi: list[float], generator: torch.Generator) -> torch.Tensor:
    """groups (B, c, k, C) with the xyz of each group scaled by a log-uniform factor in [lo, hi]."""
    lo, hi = (math.log(v) for v in lo_hi)
    u = torch.rand(groups.shape[:2], generator=generator).to(groups.device)
    scale = torch.exp(lo + (hi - lo) * u)[..., None, None]                      # (B, c, 1, 1)
    return torch.cat([groups[..., :3] * scale, groups[..., 3:]], -1)
