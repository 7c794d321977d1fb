"""Point-JEPA pre-training: center sequencer, contiguous target/context blocks, predictor, EMA target."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import JEPAConfig
from .backbone import PointBackbone
from .encoder import Block
from .sampling import farthest_point_sample, gather_points, knn
from .tokenizer import sanitize_points


def sequence_centers(centers: torch.Tensor) -> torch.Tensor:
    """Greedy nearest-neighbour ordering of centers (B, c, 3) -> permutation (B, c).

    Starts at the center with the smallest coordinate sum, then repeatedly visits the nearest
    unvisited center, so that contiguous runs of the sequence are spatially contiguous.
    """
    b, c, _ = centers.shape
    dist = torch.cdist(centers, centers)                            # (B, c, c)
    order = torch.empty(b, c, dtype=torch.long, device=centers.device)
    visited = torch.zeros(b, c, dtype=torch.bool, device=centers.device)
    cur = centers.sum(-1).argmin(-1)
    ar = torch.arange(b, device=centers.device)
    for i in range(c):
        order[:, i] = cur
        visited[ar, cur] = True
        d = dist[ar, cur].masked_fill(visited, float("inf"))
        cur = d.argmin(-1)
    return order


def sample_blocks(c: int, batch: int, cfg: JEPAConfig, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and context positions in sequence order.

    Returns targets (B, M, L_t) with M = cfg.num_targets contiguous blocks of one length L_t per
    batch (a fraction in target_scale of c), and context (B, L_c): the first L_c positions of a
    contiguous run (fraction in context_scale) after removing every target position. L_c is the
    same for the whole batch (the shortest sample's count), and at least cfg.min_context.
    """
    def draw(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    lt = max(1, round(c * draw(*cfg.target_scale)))
    starts = torch.randint(0, c - lt + 1, (batch, cfg.num_targets), generator=generator)
    targets = starts.unsqueeze(-1) + torch.arange(lt)                # (B, M, L_t)
    lc = max(1, round(c * draw(*cfg.context_scale)))
    cstart = torch.randint(0, c - lc + 1, (batch,), generator=generator)
    is_target = torch.zeros(batch, c, dtype=torch.bool)
    is_target.scatter_(1, targets.reshape(batch, -1), True)
    pos = torch.arange(c)
    in_run = (pos >= cstart[:, None]) & (pos < (cstart + lc)[:, None]) & ~is_target
    count = int(in_run.sum(1).min())
    if count < cfg.min_context:  # targets swallowed the run: fall back to any non-target positions
        in_run = ~is_target
        count = int(in_run.sum(1).min())
    if count < 1:
        raise ValueError(f"no context left with {c} tokens and target scale {cfg.target_scale}")
    # stable order of the kept positions: sort keys put kept positions first, in sequence order
    key = torch.where(in_run, pos.expand(batch, -1), pos.expand(batch, -1) + c)
    context = key.argsort(dim=1)[:, :count]
    return targets, context


def gather_groups(groups: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """groups (B, c, k, C), idx (B, L) -> (B, L, k, C)."""
    b, c, k, ch = groups.shape
    return gather_points(groups.reshape(b, c, k * ch), idx).reshape(b, idx.shape[1], k, ch)


@dataclass
class MaskedView:
    """One batch grouped once, ordered by the sequencer, masked into blocks and its context encoded.

    groups (B, c, k, C) and centers (B, c, 3) are in the tokenizer's (FPS) order; order (B, c) is the
    sequence; centers_seq (B, c, 3), targets (B, M, L_t) and context (B, L_c) are in sequence order;
    ctx (B, L_c, D) is the online encoder's output on the context tokens.
    """

    groups: torch.Tensor
    centers: torch.Tensor
    order: torch.Tensor
    centers_seq: torch.Tensor
    targets: torch.Tensor
    context: torch.Tensor
    ctx: torch.Tensor
    cfg: JEPAConfig
    training: bool

    @property
    def batch(self) -> int:
        return self.centers.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.centers.shape[1]

    def predictor_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(context centers (B, L_c, 3), target centers (B, M, L_t, 3)) as the predictor sees them
        (cfg.predictor_pos, cfg.target_pos_noise)."""
        b, m, lt = self.targets.shape
        ctx_c = gather_points(self.centers_seq, self.context)                            # (B, Lc, 3)
        tgt_c = gather_points(self.centers_seq, self.targets.reshape(b, -1)).reshape(b, m, lt, 3)
        if self.cfg.target_pos_noise > 0 and self.training:
            tgt_c = tgt_c + self.cfg.target_pos_noise * torch.randn_like(tgt_c)
        if self.cfg.predictor_pos == "context_relative":
            shift = ctx_c.mean(dim=1, keepdim=True)                                     # (B, 1, 3)
            ctx_c, tgt_c = ctx_c - shift, tgt_c - shift.unsqueeze(1)
        return ctx_c, tgt_c

    def predictor_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context (B*M, L_c, D), context centers (B*M, L_c, 3), target centers (B*M, L_t, 3)): one
        predictor sequence per target block."""
        b, m, lt = self.targets.shape
        ctx_c, tgt_c = self.predictor_positions()
        rep = lambda x: x.repeat_interleave(m, dim=0)                                   # noqa: E731
        return rep(self.ctx), rep(ctx_c), tgt_c.reshape(b * m, lt, 3)

    def predict(self, predictor: "JEPAPredictor") -> torch.Tensor:
        """Predicted target tokens (B*M, L_t, D), block-major within each cloud: one sequence per block,
        or with cfg.predictor_batched one sequence per cloud (JEPAPredictor.forward_blocks)."""
        if not self.cfg.predictor_batched:
            return predictor(*self.predictor_inputs())
        b, m, lt = self.targets.shape
        pred = predictor.forward_blocks(self.ctx, *self.predictor_positions())           # (B, M, Lt, D)
        return pred.reshape(b * m, lt, -1)


def masked_view(backbone: PointBackbone, points: torch.Tensor, cfg: JEPAConfig) -> MaskedView:
    """Group (FPS + kNN, once; cfg.native_grouping: the native CPU kernels), sequence, sample blocks, and
    encode the context with the online backbone.

    With cfg.context_tokens_only the online mini-PointNet and positional embedding run on the context
    groups only (the only ones the online branch uses); otherwise on every group, as the tokenizer does.
    """
    tokz = backbone.tokenizer
    if points.dim() != 3 or points.shape[-1] != tokz.in_channels:
        raise ValueError(f"pre-training expects points (B, N, {tokz.in_channels}), got {tuple(points.shape)}")
    points, _ = sanitize_points(points)
    if cfg.native_grouping and points.device.type == "cpu":
        xyz = points[..., :3].contiguous()
        centers = gather_points(xyz, farthest_point_sample(xyz, tokz.num_groups, method="fpsample_exact"))
        group_idx = knn(xyz, centers, tokz.group_size, method="kdtree")
    else:
        centers, _, group_idx = tokz.group(points)
    groups = tokz.relative_groups(points, centers, group_idx)
    order = sequence_centers(centers)
    centers_seq = gather_points(centers, order)
    b, c = centers.shape[:2]
    targets, context = (t.to(points.device) for t in sample_blocks(c, b, cfg))
    if cfg.context_tokens_only:
        src = torch.gather(order, 1, context)                                          # context -> tokenizer order
        tokens, pos = tokz.embed(gather_groups(groups, src), gather_points(centers, src))
    else:
        tokens, pos = tokz.embed(groups, centers)
        tokens, pos = (gather_points(gather_points(t, order), context) for t in (tokens, pos))
    ctx = backbone.encoder(tokens, pos).last
    return MaskedView(groups, centers, order, centers_seq, targets, context, ctx, cfg, backbone.training)


class JEPAPredictor(nn.Module):
    """Narrow transformer that predicts target-token embeddings from context embeddings.

    context (B, Lc, D), context_pos (B, Lc, 3), target_pos (B, Lt, 3) -> (B, Lt, D)
    """

    def __init__(self, dim: int, pdim: int, depth: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(dim, pdim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pdim))
        self.pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, pdim))
        self.blocks = nn.ModuleList(Block(pdim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(pdim)
        self.out = nn.Linear(pdim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_pos: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        x = self.embed(context) + self.pos(context_pos)
        m = self.mask_token.expand(target_pos.shape[0], target_pos.shape[1], -1) + self.pos(target_pos)
        x = torch.cat([x, m], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.out(self.norm(x[:, context.shape[1]:]))

    def forward_blocks(self, context: torch.Tensor, context_pos: torch.Tensor, target_pos: torch.Tensor
                       ) -> torch.Tensor:
        """All M target blocks in one sequence: context (B, Lc, D), context_pos (B, Lc, 3), target_pos
        (B, M, Lt, 3) -> (B, M, Lt, D). Context tokens attend to the context only, each block's mask
        tokens to the context and their own block, so blocks never see each other (M x fewer context
        tokens than forward, which also lets the context attend to one block's mask tokens)."""
        b, m, lt, _ = target_pos.shape
        lc = context.shape[1]
        x = self.embed(context) + self.pos(context_pos)
        q = self.mask_token + self.pos(target_pos.reshape(b, m * lt, 3))
        x = torch.cat([x, q], dim=1)
        block = torch.cat([torch.full((lc,), -1, device=x.device),
                           torch.arange(m, device=x.device).repeat_interleave(lt)])     # (T,) -1 = context
        allowed = (block[None, :] == -1) | (block[:, None] == block[None, :])            # (T, T) query x key
        for blk in self.blocks:
            x = blk(x, allowed[None, None])
        return self.out(self.norm(x[:, lc:])).reshape(b, m, lt, -1)


def layer_averaged_targets(hidden: Sequence[torch.Tensor], layers: int) -> torch.Tensor:
    """Mean of the LayerNorm'd outputs (B, c, D) of the last `layers` blocks -> (B, c, D) float32
    (hidden: every block's raw output; 1: the last block's output as it is, the caller normalises)."""
    if layers <= 1:
        return hidden[-1]
    if layers > len(hidden):
        raise ValueError(f"jepa.target_layers {layers} > the encoder's {len(hidden)} blocks")
    d = hidden[-1].shape[-1]
    return torch.stack([F.layer_norm(h.float(), (d,)) for h in list(hidden)[-layers:]]).mean(0)


def position_residual(tokens: torch.Tensor, pos: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """tokens (B, c, D) minus their least-squares fit (ridge, with a bias) from pos (B, c, P) over the whole
    batch -> (B, c, D) float32: what of each token its position alone does not explain."""
    with torch.autocast(tokens.device.type, enabled=False):                    # the fit in float32, also under bf16
        y = tokens.float().reshape(-1, tokens.shape[-1])
        x = pos.float().reshape(-1, pos.shape[-1])
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)                        # (B c, P + 1)
        gram = x.T @ x
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        w = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * eye, x.T @ y)
        return (y - x @ w).reshape(tokens.shape)


def variance_covariance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance and covariance terms of features z (..., D), over all rows (float32):
    mean over dimensions of relu(1 - std) + sum of squared off-diagonal covariances / D. Zero for
    decorrelated features of std >= 1 in every dimension; large when they collapse onto a few directions."""
    z = z.float().reshape(-1, z.shape[-1])
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + eps)
    cov = (z.T @ z) / max(1, z.shape[0] - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1.0 - std).mean() + off.pow(2).sum() / z.shape[1]


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Linear momentum schedule from `start` to `end` over `total` steps."""
    return start + (end - start) * min(1.0, step / max(1, total))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online for parameters; buffers (BN statistics) are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


class PointJEPA(nn.Module):
    """Context backbone + predictor trained to match an EMA target backbone on masked blocks.

    forward(points (B, N, C)) -> loss (scalar Smooth L1 on LayerNorm'd target tokens).
    """

    def __init__(self, backbone: PointBackbone, cfg: JEPAConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.target = copy.deepcopy(backbone)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.predictor = JEPAPredictor(backbone.dim, cfg.predictor_dim, cfg.predictor_depth, cfg.predictor_heads)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        view = masked_view(self.backbone, points, self.cfg)
        b, d = view.batch, self.backbone.dim
        with torch.no_grad():  # target branch: same groups, EMA weights, full token set
            self.target.eval()
            t_tokens = gather_points(self.target.tokenizer.encoder(view.groups), view.order)
            t_pos = self.target.tokenizer.pos_embed(view.centers_seq)
            y = layer_averaged_targets(self.target.encoder(t_tokens, t_pos).hidden, self.cfg.target_layers)
            if self.cfg.target == "position_residual":
                y = position_residual(y, t_pos)
            y = F.layer_norm(y.float(), (d,))
        pred = view.predict(self.predictor)
        target = gather_points(y, view.targets.reshape(b, -1)).reshape(pred.shape)
        loss = F.smooth_l1_loss(pred.float(), target, beta=self.cfg.loss_beta)
        if self.cfg.vc_weight > 0:       # keep the context tokens spread over every dimension
            loss = loss + self.cfg.vc_weight * variance_covariance(view.ctx)
        return loss

    def update_target(self, step: int, total: int) -> float:
        m = ema_momentum(step, total, *self.cfg.ema)
        ema_update(self.target, self.backbone, m)
        return m
