"""Point-JEPA pre-training: center sequencer, contiguous target/context blocks, predictor, EMA target."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import JEPAConfig
from .backbone import PointBackbone
from .encoder import Block
from .sampling import gather_points


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
        tok = self.backbone.tokenizer(points)
        order = sequence_centers(tok.centers)
        tokens, pos, centers = (gather_points(t, order) for t in (tok.tokens, tok.pos, tok.centers))
        b, c, d = tokens.shape
        targets_idx, context_idx = sample_blocks(c, b, self.cfg)
        targets_idx, context_idx = targets_idx.to(points.device), context_idx.to(points.device)

        with torch.no_grad():  # target branch: same groups, EMA weights, full token set
            self.target.eval()
            t_tokens = self.target.tokenizer.encoder(tok.groups)
            t_tokens = gather_points(t_tokens, order)
            t_pos = self.target.tokenizer.pos_embed(centers)
            y = self.target.encoder(t_tokens, t_pos).hidden[-1]
            y = F.layer_norm(y, (d,))

        ctx = self.backbone.encoder(gather_points(tokens, context_idx), gather_points(pos, context_idx)).last
        m = targets_idx.shape[1]
        flat_t = targets_idx.reshape(b * m, -1)                       # (B*M, Lt)
        rep = lambda x: x.repeat_interleave(m, dim=0)                 # noqa: E731
        pred = self.predictor(rep(ctx), rep(gather_points(centers, context_idx)),
                              gather_points(rep(centers), flat_t))
        target = gather_points(rep(y), flat_t)
        return F.smooth_l1_loss(pred, target, beta=self.cfg.loss_beta)

    def update_target(self, step: int, total: int) -> float:
        m = ema_momentum(step, total, *self.cfg.ema)
        ema_update(self.target, self.backbone, m)
        return m
