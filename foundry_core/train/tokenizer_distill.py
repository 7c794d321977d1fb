"""Distilling a tokenizer alone: a student tokenizer's group encoder learns the teacher tokenizer's
tokens on the same groups (the initialisation of student.tokenizer.init_epochs, before the main
distillation loop adds the same token-level loss to the reconstruction loss).

    loss = SmoothL1(student_tokenizer.encoder(G), teacher_tokenizer.encoder(G))    G (B, c, k, C)

group_scale [lo, hi]: the xyz of every group is first scaled by its own log-uniform factor in [lo, hi].
extra sources: clouds of other densities (e.g. scenes with more centers), batches interleaved at random.

Only the group encoder is trained: the positional embedding is the teacher's copy and the grouping
(FPS + kNN) is shared, so the two tokenizers differ in nothing else.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..models.tokenizer import PointTokenizer


@dataclass
class InitSource:
    """Clouds the tokenizer-only distillation reads: items' "points" (N, C), grouped with num_groups
    centers (None: the tokenizer's), `repeats` passes per epoch."""

    name: str
    dataset: Dataset
    num_groups: int | None = None
    repeats: int = 1


def distill_tokenizer(student: PointTokenizer, teacher: PointTokenizer, dataset: Dataset, epochs: int,
                      lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                      log_path: str | Path | None = None,
                      group_scale: list[float] | None = None,
                      extra: Sequence[InitSource] = ()) -> list[dict[str, float]]:
    """Train student.encoder for `epochs` epochs (AdamW, cosine lr) on dataset items' "points"
    (N, C) and on the `extra` sources (their batches interleaved at random); returns (and writes to
    log_path as JSON) the mean token loss of every epoch, overall and per source."""
    device = next(teacher.parameters()).device
    student.to(device)
    teacher.eval()
    params = [p for p in student.encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student tokenizer's group encoder has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    sources = [InitSource("data", dataset), *extra]
    loaders = [DataLoader(src.dataset, batch_size=batch_size, shuffle=True, generator=gen) for src in sources]
    per_epoch = [len(loader) * src.repeats for src, loader in zip(sources, loaders)]
    total = max(1, epochs * sum(per_epoch))
    history: list[dict[str, float]] = []
    step = 0
    was_training = student.training
    student.train()
    for epoch in range(epochs):
        order = torch.cat([torch.full((n,), i) for i, n in enumerate(per_epoch)])
        if len(sources) > 1:                    # (one source: the generator draws exactly as without extra)
            order = order[torch.randperm(len(order), generator=gen)]
        order = order.tolist()
        iters = [_cycle(loader) for loader in loaders]
        losses: dict[int, list[float]] = {i: [] for i in range(len(sources))}
        for i in order:
            pts = next(iters[i])["points"].to(device)
            with torch.no_grad():
                centers, _, gidx = student.group(pts, sources[i].num_groups, generator=gen)
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
            losses[i].append(loss.item())
            step += 1
        every = [v for vs in losses.values() for v in vs]
        row = {"epoch": epoch + 1, "token_loss": sum(every) / max(1, len(every))}
        if extra:
            row.update({f"token_loss_{src.name}": sum(losses[i]) / max(1, len(losses[i]))
                        for i, src in enumerate(sources)})
        history.append(row)
        print(f"[distill] tokenizer init epoch {epoch + 1}/{epochs} "
              + " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"), flush=True)
    student.train(was_training)
    if log_path is not None:
        Path(log_path).write_text(json.dumps(history, indent=2))
    return history


def _cycle(loader: DataLoader) -> Iterator[dict]:
    """The loader's batches, reshuffled at each pass, without end."""
    while True:
        yield from loader


def scale_groups(groups: torch.Tensor, lo_hi: list[float], generator: torch.Generator) -> torch.Tensor:
    """groups (B, c, k, C) with the xyz of each group scaled by a log-uniform factor in [lo, hi]."""
    lo, hi = (math.log(v) for v in lo_hi)
    u = torch.rand(groups.shape[:2], generator=generator).to(groups.device)
    scale = torch.exp(lo + (hi - lo) * u)[..., None, None]                      # (B, c, 1, 1)
    return torch.cat([groups[..., :3] * scale, groups[..., 3:]], -1)
