"""Token gate of Foundry-Gate (Sec. 3.4, supp. B.2/B.4): which tokens are merged into SuperTokens.

A 2-layer MLP + sigmoid predicts a fusion probability pi (B, c) per token. A token is MERGED
(compressed by DSO) when selected, otherwise it bypasses DSO and enters the encoder alongside the
SuperTokens. Selection rules (all with fixed shapes, ONNX-exportable: sort + rank comparisons,
no boolean-indexed gathers, no data-dependent Python ints):

* fusion threshold r: merge every token with pi > r;
* token budget B_tok (maximum number of tokens entering the encoder, = s + unmerged tokens in
  the worst case): when B_tok < c, the top-(c - B_tok + s) tokens by pi are merged in every
  sample, plus any other with pi > r when r is given; B_tok >= c forces nothing (the student
  masks empty SuperTokens, so at most c tokens enter); B_tok < s is an error;
* neither given: r = the training threshold (0.5 by default).

Training uses the straight-through estimator: selection = hard + (pi - pi.detach()) (forward
value exactly 0/1, gradient of pi). The regulariser gate_loss = -lambda * sum_i pi_i (mean over
the batch) pushes the gate to merge.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoder import init_weights


@dataclass
class GateOutput:
    probs: torch.Tensor      # (B, c) fusion probability pi
    merge: torch.Tensor      # (B, c) bool: token is merged into the SuperTokens
    selection: torch.Tensor  # (B, c) float, forward value = merge, straight-through gradient of pi
    loss: torch.Tensor       # scalar regulariser -lambda * sum_i pi_i, mean over the batch


def forced_merges(num_tokens: int, num_supertokens: int, budget: int | None) -> int:
    """How many tokens per sample must be merged so that at most `budget` tokens enter the encoder."""
    if budget is None:
        return 0
    budget = int(budget)
    if budget < num_supertokens:
        raise ValueError(f"token budget {budget} is smaller than the number of SuperTokens "
                         f"{num_supertokens}; the encoder always receives the SuperTokens")
    if budget >= num_tokens:
        return 0
    return min(num_tokens, num_tokens - budget + num_supertokens)


def forced_merges_tensor(probs: torch.Tensor, num_supertokens: int, slots: torch.Tensor) -> torch.Tensor:
    """forced_merges as a 0-d int64 tensor computed from shapes only (exportable): probs (B, c),
    slots (L,) the encoder slots (L = min(budget, c)); L < c -> c - L + s, else 0."""
    c = torch.ones_like(probs[0], dtype=torch.int64).sum()
    length = torch.ones_like(slots, dtype=torch.int64).sum()
    return torch.where(length < c, c - length + num_supertokens, torch.zeros_like(c))


def rank_descending(probs: torch.Tensor) -> torch.Tensor:
    """probs (B, c) -> rank (B, c) int64 of every entry in descending order (0 = largest; ties
    broken by index, i.e. a stable sort). Pairwise comparisons (B, c, c) instead of a stable sort,
    which ONNX has no operator for."""
    c = probs.shape[1]
    ar = torch.arange(c, device=probs.device)
    pi, pj = probs.unsqueeze(2), probs.unsqueeze(1)              # i: the entry ranked, j: the others
    before = (pj > pi) | ((pj == pi) & (ar.view(1, 1, c) < ar.view(1, c, 1)))
    return before.sum(dim=2)


def merge_mask(probs: torch.Tensor, num_supertokens: int, budget: int | None = None,
               fusion_threshold: float | torch.Tensor | None = None,
               n_forced: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed-shape selection of the tokens to merge: probs (B, c) -> (B, c) bool.
    n_forced (0-d tensor, see forced_merges_tensor) replaces the integer budget rule when given."""
    if n_forced is None:
        n_forced = forced_merges(probs.shape[1], num_supertokens, budget)
        merge = (rank_descending(probs) < n_forced if n_forced > 0
                 else torch.zeros_like(probs, dtype=torch.bool))
    else:
        merge = rank_descending(probs) < n_forced
    if fusion_threshold is not None:
        merge = merge | (probs > fusion_threshold)
    return merge


class TokenGate(nn.Module):
    """tokens (B, c, d) -> GateOutput. See the module docstring for the selection rules."""

    def __init__(self, dim: int, hidden: int = 128, threshold: float = 0.5, reg_weight: float = 1e-11):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)
        self.threshold, self.reg_weight = float(threshold), float(reg_weight)
        self.apply(init_weights)

    def probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, c, d) -> fusion probabilities (B, c)."""
        return torch.sigmoid(self.fc2(self.act(self.fc1(tokens)))).squeeze(-1)

    def select(self, probs: torch.Tensor, num_supertokens: int, budget: int | None = None,
               fusion_threshold: float | torch.Tensor | None = None,
               n_forced: torch.Tensor | None = None) -> GateOutput:
        if budget is None and fusion_threshold is None and n_forced is None:
            fusion_threshold = self.threshold
        merge = merge_mask(probs, num_supertokens, budget, fusion_threshold, n_forced)
        hard = merge.to(probs.dtype)
        selection = hard + (probs - probs.detach()) if self.training else hard
        loss = -self.reg_weight * probs.sum(dim=1).mean()
        return GateOutput(probs=probs, merge=merge, selection=selection, loss=loss)

    def forward(self, tokens: torch.Tensor, num_supertokens: int, budget: int | None = None,
                fusion_threshold: float | torch.Tensor | None = None,
                n_forced: torch.Tensor | None = None) -> GateOutput:
        return self.select(self.probs(tokens), num_supertokens, budget, fusion_threshold, n_forced)
