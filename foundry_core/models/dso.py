"""Dynamic SuperToken Optimization (DSO, Foundry Sec. 3.2): compress c tokens into s SuperTokens.

Learnable SuperTokens S (s, d) act as queries, the tokenizer tokens T (B, c, d) — taken *before*
the positional embedding — as keys and values:

    Q = S W_Q,  K = T W_K,  V = T W_V,  logits_ji = q_i . k_j / sqrt(d)       (B, c, s)

Every token is routed to one SuperToken by a one-hot Cross-Attention Map (CAM, Eq. 3). Training
uses the straight-through Gumbel-Softmax (one-hot forward, soft gradient, temperature tau);
evaluation uses the plain argmax (deterministic, no noise). Each SuperToken becomes the mean of
the values routed to it (Eq. 4); the positional embeddings are pooled with the same CAM and
returned separately, so the encoder adds them as usual.

Empty SuperTokens (no token routed to them) are well defined and never NaN: their feature is
their own learnable vector projected by W_V, i.e. W_V(S_i) (what the mean would be if the
SuperToken had "attended to itself"), and their pooled positional embedding is zero. `counts`
tells the caller which SuperTokens are empty (FoundryStudent masks them out of the encoder).

`hard=False` is the soft-assignment ablation (paper Table 8): CAM = softmax(logits / tau) in
training and evaluation, no Gumbel noise; the grouped mean becomes a CAM-weighted mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .encoder import init_weights


@dataclass
class DSOOutput:
    supertokens: torch.Tensor  # (B, s, d) grouped mean of the values (W_V(S_i) when empty)
    pos: torch.Tensor          # (B, s, d) grouped mean of the positional embeddings (0 when empty)
    cam: torch.Tensor          # (B, c, s) cross-attention map; zero rows for tokens not merged
    assignment: torch.Tensor   # (B, c) int64 SuperToken id of every token, -1 for tokens not merged
    counts: torch.Tensor       # (B, s) (soft) number of tokens routed to each SuperToken


def gumbel_noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel samples -log(-log U) with U ~ U(0, 1) from torch.rand (global RNG unless
    a generator is given); U is clamped away from 0 and 1 so the noise is always finite."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    eps = torch.finfo(like.dtype).eps
    u = u.clamp(min=torch.finfo(like.dtype).tiny, max=1.0 - eps)
    return -torch.log(-torch.log(u))


def one_hot_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (..., s) -> (one-hot float (..., s) of the argmax, argmax index (...) int64)."""
    idx = scores.argmax(dim=-1)
    hard = torch.zeros_like(scores).scatter(-1, idx.unsqueeze(-1), 1.0)
    return hard, idx


class DSO(nn.Module):
    """tokens (B, c, d), pos (B, c, d), keep (B, c) bool | None -> DSOOutput with s SuperTokens.

    keep: tokens taking part in the merge (True); the others get a zero CAM row, assignment -1
    and contribute nothing to the SuperTokens (used by the gate of Foundry-Gate).
    """

    def __init__(self, dim: int, num_supertokens: int, qkv_bias: bool = False, tau: float = 1.0,
                 hard: bool = True, similarity: str = "dot"):
        super().__init__()
        if num_supertokens < 1:
            raise ValueError(f"num_supertokens must be >= 1, got {num_supertokens}")
        if tau <= 0:
            raise ValueError(f"Gumbel-Softmax temperature must be > 0, got {tau}")
        self.dim, self.num_supertokens, self.tau, self.hard = dim, num_supertokens, float(tau), hard
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.apply(init_weights)
        self.supertokens = nn.Parameter(torch.empty(num_supertokens, dim))
        nn.init.trunc_normal_(self.supertokens, std=0.02)
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"DSO similarity must be 'dot' or 'cosine', got {similarity!r}")
        self.similarity = similarity
        if similarity == "cosine":     # learnable logit scale, exp(log 10) = 10 at the start
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, c, d) -> (B, c, s): q_i . k_j / sqrt(d) ("dot", the paper), or ("cosine")
        scale * cos(q_i, k_j - mean_j k_j): keys centred per cloud, so the assignment depends on how
        tokens differ, not on the component they all share; it stays well above the Gumbel noise
        from the first step (with "dot" and 0.02-scale initialisations the logits are ~1e-4 and the
        noise decides every assignment until W_Q / W_K have grown)."""
        q = self.q(self.supertokens)                                  # (s, d)
        k = self.k(tokens)                                            # (B, c, d)
        if self.similarity == "dot":
            return torch.matmul(k, q.t()) / math.sqrt(self.dim)
        k = nn.functional.normalize(k - k.mean(dim=1, keepdim=True), dim=-1)
        return torch.matmul(k, nn.functional.normalize(q, dim=-1).t()) * self.logit_scale.exp().clamp(max=100.0)

    def assign(self, logits: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (B, c, s) -> (CAM (B, c, s), argmax id (B, c))."""
        if not self.hard:
            soft = torch.softmax(logits / self.tau, dim=-1)
            return soft, soft.argmax(dim=-1)
        if not self.training:
            return one_hot_argmax(logits)
        soft = torch.softmax((logits + gumbel_noise(logits.shape, logits, generator)) / self.tau, dim=-1)
        hard, idx = one_hot_argmax(soft)
        # straight-through: the forward value is exactly the one-hot (soft - soft.detach() == 0),
        # the gradient is the Gumbel-Softmax one.
        return hard + (soft - soft.detach()), idx

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> DSOOutput:
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(f"DSO expects tokens (B, c, {self.dim}), got {tuple(tokens.shape)}")
        cam, idx = self.assign(self.logits(tokens), generator)
        if keep is not None:
            cam = cam * keep.unsqueeze(-1).to(cam.dtype)
            idx = torch.where(keep, idx, torch.full_like(idx, -1))
        v = self.v(tokens)                                            # (B, c, d)
        cam_t = cam.transpose(1, 2)                                   # (B, s, c)
        counts = cam.sum(dim=1)                                       # (B, s)
        nonempty = (counts > 0).unsqueeze(-1)                         # (B, s, 1)
        denom = counts.clamp_min(1e-12).unsqueeze(-1)
        fill = self.v(self.supertokens).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        sup = torch.where(nonempty, torch.matmul(cam_t, v) / denom, fill)
        sup_pos = torch.where(nonempty, torch.matmul(cam_t, pos) / denom, torch.zeros_like(fill))
        return DSOOutput(supertokens=sup, pos=sup_pos, cam=cam, assignment=idx, counts=counts)
