"""BatchNorm statistics per operating point (ours; the private BatchNorms of slimmable networks, for a
compute range of points and centers rather than widths).

A scene model trained over operating points shares its weights across them, but the feature
statistics its BatchNorms normalise by are not shared by the data: a group of 16 points among 1,024
spans a larger, sparser neighbourhood than among 16,384. One set of running statistics averaged over
every point (precise BatchNorm, train/precise_batchnorm.py) fits none of them exactly; measured on a
step-7 checkpoint, statistics recomputed on each point's own batches raise test-split mIoU at p1k /
p8k / p16k by 2.9 / 1.9 / 5.7 points.

A BatchNormBank holds, per operating point name, the running mean and variance of every BatchNorm
of a model (a few KB); ``apply(model, name)`` copies one set into the modules (weights untouched).
Exported models carry it as extra tensors ``batchnorm_bank.<point>.<module>.running_{mean,var}``
next to the shared statistics (what runs when no point is named).
"""
from __future__ import annotations

import torch
from torch import nn

PREFIX = "batchnorm_bank."
STATS = ("running_mean", "running_var")


def batchnorm_modules(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """name -> BatchNorm module with running statistics, in module order."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


class BatchNormBank:
    """Per operating point: {BatchNorm module name: (running_mean, running_var)}."""

    def __init__(self, stats: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None):
        self.stats = dict(stats or {})

    @property
    def points(self) -> list[str]:
        return list(self.stats)

    def __contains__(self, name: object) -> bool:
        return name in self.stats

    def record(self, name: str, model: nn.Module) -> None:
        """Store the model's current running statistics as operating point `name`'s."""
        self.stats[name] = {n: (m.running_mean.detach().cpu().clone(), m.running_var.detach().cpu().clone())
                            for n, m in batchnorm_modules(model).items()}

    @torch.no_grad()
    def apply(self, model: nn.Module, name: str) -> None:
        """Copy operating point `name`'s statistics into the model's BatchNorms."""
        mods = batchnorm_modules(model)
        stats = self.stats[name]
        if set(stats) != set(mods):
            raise ValueError(f"BatchNorm bank for {name!r} covers {sorted(stats)}, the model has {sorted(mods)}")
        for n, (mean, var) in stats.items():
            mods[n].running_mean.copy_(mean)
            mods[n].running_var.copy_(var)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}{p}.{n}.{s}": t for p, mods in self.stats.items()
                for n, pair in mods.items() for s, t in zip(STATS, pair)}

    @classmethod
    def split(cls, tensors: dict[str, torch.Tensor], points: list[str]
              ) -> tuple[dict[str, torch.Tensor], "BatchNormBank | None"]:
        """(the other tensors, the bank of `points`) of a checkpoint's tensors (None: no bank)."""
        rest = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
        if not points:
            return rest, None
        stats: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in points:
            head = f"{PREFIX}{p}."
            names = sorted({k[len(head):].rsplit(".", 1)[0] for k in tensors if k.startswith(head)})
            if not names:
                raise ValueError(f"the model lists BatchNorm statistics for {p!r} but holds none")
            stats[p] = {n: (tensors[f"{head}{n}.running_mean"].float(), tensors[f"{head}{n}.running_var"].float())
                        for n in names}
        return rest, cls(stats)
