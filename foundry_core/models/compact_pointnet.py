"""The student tokenizer's group encoder (ours, new to Foundry): a compact mini-PointNet trained to
reproduce the teacher's tokens, and the BatchNorm folding both group encoders use at inference.

The teacher's mini-PointNet (tokenizer.MiniPointNet) runs two shared MLPs over every group point
and ends in a per-point 512 -> d layer, ~365k multiply-adds a point (96 % of a ViT-S teacher's
tokenizer time on CPU). CompactPointNet keeps its structure (local MLP, group max, [global, local]
MLP, group max) at smaller widths and moves the projection to the token width d after the last
max, where it runs once per group instead of once per point:

    f = Linear(h2) . ReLU . BN . Linear(h1) (x)                   per point   (B, c, k', h2)
    g = max_k f                                                   per group   (B, c, h2)
    m = max_k ReLU(BN(W_f f + W_g g + b))                          per point -> (B, c, h3)
    tokens = Linear(d) . GELU . Linear(h3) (m)                    per group   (B, c, d)

With scale_free, each group is first expressed at unit size: offsets divided by the group's radius r
(its largest offset norm) and log r appended as one more input channel, so groups of a dense scene
and of a sparse object (~3x larger) share one shape code and differ only in that channel.

Widths (h1, h2, h3) = (64, 128, 256) cost ~41k multiply-adds a point (~8x fewer). k' =
group_points reads only the k' nearest points of each group (groups are nearest first), default
all k. It is trained by distillation (a token-level loss against the teacher tokenizer's output,
stages/distill.py, optionally after distilling the tokenizer alone, train/tokenizer_distill.py).

Inference (eval mode) runs the same function with less work: the BatchNorms are folded into the
Linear layers before them, and since ReLU is monotone and the group term W_g g + b is constant
over a group, max_k ReLU(W_f f_k + u) = ReLU(max_k (W_f f_k) + u): the group term and the ReLU
are applied once per group, not per point.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

DEFAULT_WIDTHS = (64, 128, 256)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm1d
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear (weight (O, I), bias (O,)) followed by an eval-mode BatchNorm over O -> the one
    Linear (weight, bias) that computes both."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.unsqueeze(1), (b - bn.running_mean) * scale + bn.bias


FOLDING = {"enabled": True}    # switched off only to measure what folding saves (batchnorm_folding)


def folds(module: nn.Module, *bns: nn.BatchNorm1d) -> bool:
    """Whether the inference path applies: eval mode with running statistics (and folding enabled)."""
    return (FOLDING["enabled"] and not module.training
            and all(bn.track_running_stats and bn.running_var is not None for bn in bns))


CHUNK_POINTS = 4096      # group points per chunk of the eval path (activations stay in cache)


def over_group_chunks(fn: Callable[[torch.Tensor], torch.Tensor], groups: torch.Tensor,
                      chunk_points: int = CHUNK_POINTS) -> torch.Tensor:
    """fn (G', k, C) -> (G', D) applied to groups (G, k, C) a few whole groups at a time (about
    chunk_points points), results concatenated: the same values, but each chunk's per-point
    activations fit in the CPU caches (2-3x faster than one pass over all B c k points here).
    GPUs and exported graphs take one pass (a loop would be unrolled at the example's size)."""
    step = max(1, chunk_points // max(1, groups.shape[1]))
    if groups.device.type != "cpu" or torch.compiler.is_exporting() or groups.shape[0] <= step:
        return fn(groups)
    return torch.cat([fn(groups[i:i + step]) for i in range(0, groups.shape[0], step)])


def scale_free_groups(groups: torch.Tensor) -> torch.Tensor:
    """groups (B, c, k, 3+F) -> (B, c, k, 3+F+1): xyz offsets / r, the extra channels, log r, with
    r = the group's largest offset norm (clamped at 1e-6)."""
    xyz = groups[..., :3]
    r = torch.linalg.vector_norm(xyz, dim=-1).amax(-1, keepdim=True).clamp_min(1e-6).unsqueeze(-1)  # (B, c, 1, 1)
    return torch.cat([xyz / r, groups[..., 3:], torch.log(r).expand(*groups.shape[:-1], 1)], dim=-1)


@contextlib.contextmanager
def batchnorm_folding(enabled: bool):
    """Within the block the group encoders fold their BatchNorms at inference iff `enabled`
    (the same function either way; foundry bench measures the difference)."""
    saved = FOLDING["enabled"]
    FOLDING["enabled"] = bool(enabled)
    try:
        yield
    finally:
        FOLDING["enabled"] = saved


class CompactPointNet(nn.Module):
    """groups (B, c, k, C_in) -> tokens (B, c, dim); see the module docstring."""

    def __init__(self, in_channels: int, dim: int, widths: tuple[int, int, int] | list[int] = DEFAULT_WIDTHS,
                 group_points: int | None = None, scale_free: bool = False):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"compact PointNet widths must be three sizes >= 1, got {widths}")
        if group_points is not None and group_points < 1:
            raise ValueError(f"group_points must be >= 1 or None, got {group_points}")
        h1, h2, h3 = (int(w) for w in widths)
        self.in_channels, self.dim, self.widths, self.group_points = in_channels, dim, (h1, h2, h3), group_points
        self.scale_free = bool(scale_free)
        self.fc1 = nn.Linear(in_channels + int(self.scale_free), h1)
        self.bn1, self.fc2 = nn.BatchNorm1d(h1), nn.Linear(h1, h2)
        self.fuse, self.bn2 = nn.Linear(2 * h2, h3), nn.BatchNorm1d(h3)   # input [global g | local f]
        self.out = nn.Sequential(nn.Linear(h3, h3), nn.GELU(), nn.Linear(h3, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        if groups.dim() != 4 or groups.shape[-1] != self.in_channels:
            raise ValueError(f"CompactPointNet expects groups (B, c, k, {self.in_channels}), got {tuple(groups.shape)}")
        if self.group_points is not None:
            groups = groups[:, :, :self.group_points]
        if self.scale_free:
            groups = scale_free_groups(groups)
        b, c, k, ch = groups.shape
        h2 = self.widths[1]
        if folds(self, self.bn1, self.bn2):
            w1, b1 = fold_batchnorm(self.fc1.weight, self.fc1.bias, self.bn1)
            w, bias = fold_batchnorm(self.fuse.weight, self.fuse.bias, self.bn2)
            folded = (w1.t(), b1, w[:, h2:].t(), w[:, :h2].t(), bias)
            pooled = over_group_chunks(lambda g: self._pooled_folded(g, folded), groups.reshape(b * c, k, ch))
            return self.out(pooled).view(b, c, -1)
        x = groups.reshape(-1, ch)
        f = self.fc2(torch.relu(self.bn1(self.fc1(x))))                                # (n, h2)
        g = f.view(b * c, k, h2).amax(1)                                               # (bc, h2)
        w = self.fuse.weight
        h = nn.functional.linear(f, w[:, h2:]).view(b * c, k, -1) + \
            nn.functional.linear(g, w[:, :h2], self.fuse.bias).unsqueeze(1)
        h = torch.relu(self.bn2(h.reshape(b * c * k, -1))).view(b * c, k, -1)
        return self.out(h.amax(1)).view(b, c, -1)

    def _pooled_folded(self, groups: torch.Tensor, folded: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Eval path: groups (G, k, C_in) -> max-pooled second-MLP features (G, h3); folded = the
        BatchNorm-folded (W1^T, b1, W_f^T, W_g^T, b)."""
        w1t, b1, wft, wgt, bias = folded
        n, k, ch = groups.shape
        f = self.fc2(torch.addmm(b1, groups.reshape(-1, ch), w1t).relu_())               # (n k, h2)
        g = f.view(n, k, -1).amax(1)                                                     # (n, h2)
        m = torch.mm(f, wft).view(n, k, -1).amax(1)                                      # (n, h3)
        return m.add_(torch.addmm(bias, g, wgt)).relu_()

    def spec(self) -> dict:
        """What rebuilds this module (PointTokenizer's `pointnet` argument)."""
        spec = {"kind": "compact", "widths": list(self.widths), "group_points": self.group_points}
        return {**spec, "scale_free": True} if self.scale_free else spec
