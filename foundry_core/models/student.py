"""Foundry student (compress -> encode -> reconstruct), a drop-in for PointBackbone.

    points -> tokenizer -> T, P (B, c, d)
           -> [gate: which tokens merge] -> DSO: s SuperTokens + pooled positions
           -> student encoder on the SuperTokens (+ the tokens that bypassed DSO)
           -> CAU: Y_hat = MLP(T + CAM . S_out) (B, c, teacher_dim)

Encoder input. Without gate: the s SuperTokens. With gate: the s SuperTokens and the c tokens
(those merged are padding) compacted with fixed shapes so that real entries come first, then
trimmed to L = c slots (L = min(budget, c) with a token budget, so latency falls with the budget).
A `keep` mask hides padding from real tokens. Empty SuperTokens (no token routed to them) are
masked out of the encoder as well, in both modes: they carry no information about the cloud.
At most min(c, budget) real tokens ever enter the encoder: a SuperToken is non-empty only when
at least one token was merged into it, so (non-empty SuperTokens) + (unmerged tokens) <= c.

Output. StudentOutput mirrors BackboneOutput: `.tokens` (tokenizer output), `.encoded.last` = Y_hat
and `.encoded.hidden` = every encoder layer's states mapped back to the c token slots (SuperToken
states broadcast by the CAM, bypass tokens' own states; each layer mapped when a head first reads
it; Y_hat, i.e. the CAU, computed when `.last` is first read), so heads work unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configs import ModelConfig
from .cau import CAU
from .dso import DSO
from .distillable import FreezableBackbone
from .encoder import DeferredLast, EncoderOutput, MappedLayers, TransformerEncoder
from .gate import TokenGate, forced_merges, forced_merges_tensor
from .tokenizer import PointTokenizer, Tokens


@dataclass
class StudentOutput:
    tokens: Tokens                   # tokenizer output (centers, groups, raw tokens)
    encoded: EncoderOutput           # last = Y_hat (B, c, teacher_dim); hidden = depth x (B, c, D)
    cam: torch.Tensor                # (B, c, s) cross-attention map (zero rows for bypass tokens)
    segments: torch.Tensor           # (B, c) int64: SuperToken id (< s), or s + rank for bypass tokens
    merged: torch.Tensor             # (B, c) bool: token compressed into a SuperToken
    tokens_in_encoder: torch.Tensor  # (B,) int64 real (non-padding) tokens entering the encoder
    encoder_keep: torch.Tensor       # (B, L) bool keep mask of the encoder sequence (L = its length)
    supertokens_out: torch.Tensor    # (B, s, D) encoder output (LayerNorm'd) at the SuperTokens
    counts: torch.Tensor             # (B, s) tokens routed to each SuperToken
    gate_probs: torch.Tensor | None  # (B, c) fusion probabilities, None without gate
    gate_loss: torch.Tensor          # scalar gate regulariser (0 without gate)

    @property
    def last(self) -> torch.Tensor:
        return self.encoded.last


class FoundryStudent(FreezableBackbone):
    """points (B, N, C) -> StudentOutput (drop-in for BackboneOutput).

    tokenizer: produces tokens of width tokenizer.dim; if it differs from encoder.dim, linear
    projections map tokens and positions to the encoder width (the CAU residual then uses the
    projected tokens). teacher_dim: width of Y_hat (the teacher's token width).
    """

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, num_supertokens: int,
                 teacher_dim: int, gate: bool = False, *, qkv_bias: bool = False, tau: float = 1.0,
                 hard: bool = True, cau_hidden_ratio: float = 4, cau_out_norm: bool = False, cau_skip: bool = False,
                 gate_hidden: int = 128, gate_threshold: float = 0.5, gate_reg_weight: float = 1e-11,
                 dso_similarity: str = "dot", cfg: ModelConfig | None = None):
        super().__init__()
        d_tok, d = tokenizer.dim, encoder.dim
        self.cfg = cfg
        self.tokenizer, self.encoder = tokenizer, encoder
        self.num_supertokens, self.teacher_dim = num_supertokens, teacher_dim
        self.dim, self.hidden_dim, self.depth = teacher_dim, d, encoder.depth
        self.token_proj = nn.Identity() if d_tok == d else nn.Linear(d_tok, d)
        self.pos_proj = nn.Identity() if d_tok == d else nn.Linear(d_tok, d)
        self.dso = DSO(d, num_supertokens, qkv_bias=qkv_bias, tau=tau, hard=hard, similarity=dso_similarity)
        self.cau = CAU(d, teacher_dim, hidden_ratio=cau_hidden_ratio, out_norm=cau_out_norm, skip=cau_skip)
        self.gate = TokenGate(d, gate_hidden, gate_threshold, gate_reg_weight) if gate else None
        self.init_kwargs = dict(num_supertokens=num_supertokens, teacher_dim=teacher_dim, gate=gate,
                                qkv_bias=qkv_bias, tau=tau, hard=hard, cau_hidden_ratio=cau_hidden_ratio,
                                cau_out_norm=cau_out_norm, cau_skip=cau_skip, gate_hidden=gate_hidden,
                                gate_threshold=gate_threshold, gate_reg_weight=gate_reg_weight,
                                dso_similarity=dso_similarity)
        self.copied_from_teacher: list[str] = []

    @property
    def backbone_kind(self) -> str:
        return "gated_student" if self.gate is not None else "student"

    def budget_range(self, num_centers: int) -> tuple[int, int]:
        """Gated: budgets from s up to c; ungated: always the s SuperTokens."""
        s = int(self.num_supertokens)
        return (s, max(int(num_centers), s)) if self.gate is not None else (s, s)

    # ------------------------------------------------------------------ forward
    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None, generator: torch.Generator | None = None) -> StudentOutput:
        """Student on given tokenizer output (lets distillation share one tokenization with the teacher).
        points / generator: accepted for the common distillable interface (used by baselines only)."""
        s = self.num_supertokens
        t = self.token_proj(tok.tokens)                             # (B, c, d)
        p = self.pos_proj(tok.pos)
        if self.gate is None:
            if fusion_threshold is not None:
                raise ValueError("fusion_threshold needs a gated student (gate=True)")
            if budget is not None and budget < s:
                raise ValueError(f"token budget {budget} is smaller than the number of SuperTokens {s}")
            return self._forward_plain(tok, t, p)
        return self._forward_gated(tok, t, p, budget, fusion_threshold)

    def _forward_plain(self, tok: Tokens, t: torch.Tensor, p: torch.Tensor) -> StudentOutput:
        d = self.dso(t, p)
        keep = d.counts > 0                                         # empty SuperTokens are padding
        enc = self.encoder(d.supertokens, d.pos, keep)
        hidden = MappedLayers(enc.hidden, lambda h: torch.matmul(d.cam, h))     # only the layers a head reads
        sup_out = enc.last * keep.unsqueeze(-1).to(enc.last.dtype)  # empty SuperTokens -> 0
        encoded = DeferredLast(lambda: self.cau(t, d.cam, sup_out), hidden)   # CAU when .last is read
        merged = torch.ones_like(d.assignment, dtype=torch.bool)
        return StudentOutput(tokens=tok, encoded=encoded, cam=d.cam,
                             segments=d.assignment, merged=merged, tokens_in_encoder=keep.sum(1),
                             encoder_keep=keep, supertokens_out=sup_out, counts=d.counts,
                             gate_probs=None, gate_loss=sup_out.new_zeros(()))

    def _forward_gated(self, tok: Tokens, t: torch.Tensor, p: torch.Tensor, budget: int | None,
                       fusion_threshold: float | None) -> StudentOutput:
        c = t.shape[1]
        if budget is not None:
            forced_merges(c, self.num_supertokens, budget)                  # validates budget >= s
        length = c if budget is None else min(int(budget), c)
        slots = torch.arange(length, device=t.device)
        if budget is None and fusion_threshold is None:
            fusion_threshold = self.gate.threshold
        return self.encode_slots(tok, slots, fusion_threshold, t, p)

    def encode_slots(self, tok: Tokens, slots: torch.Tensor, fusion_threshold: float | torch.Tensor | None,
                     t: torch.Tensor | None = None, p: torch.Tensor | None = None) -> StudentOutput:
        """Gated forward with the encoder sequence given as slot indices: slots (L,) = arange(L),
        L = min(budget, c). Budget logic from shapes and tensors only, so the same code runs eagerly
        and in exported graphs (the budget is the dynamic length of `slots`)."""
        s = self.num_supertokens
        if t is None:
            t, p = self.token_proj(tok.tokens), self.pos_proj(tok.pos)
        c = t.shape[1]
        g = self.gate(t, s, fusion_threshold=fusion_threshold,
                      n_forced=forced_merges_tensor(t[..., 0], s, slots))
        merge = g.merge
        sel = g.selection.unsqueeze(-1)                             # forward value exactly 0 / 1
        d = self.dso(t * sel, p, keep=merge)
        # candidates: s SuperTokens then the c tokens (real when unmerged), compacted real-first
        cand = torch.cat([d.supertokens, t * (1.0 - sel)], dim=1)   # (B, s + c, d)
        cand_pos = torch.cat([d.pos, p], dim=1)
        valid = torch.cat([d.counts > 0, ~merge], dim=1)            # (B, s + c)
        n = s + c
        ar = torch.arange(n, device=t.device).unsqueeze(0)
        order = torch.argsort((~valid).long() * n + ar, dim=1)      # real entries first, stable
        idx = order.index_select(1, slots)                          # (B, L)
        x = torch.gather(cand, 1, idx.unsqueeze(-1).expand(-1, -1, cand.shape[-1]))
        xp = torch.gather(cand_pos, 1, idx.unsqueeze(-1).expand(-1, -1, cand.shape[-1]))
        keep = torch.gather(valid, 1, idx)                          # (B, L)
        enc = self.encoder(x, xp, keep)
        # back from the sequence to the candidates: slot of every candidate in the sequence
        last_slot = torch.ones_like(slots).sum() - 1
        slot = torch.minimum(torch.argsort(order, dim=1), last_slot)  # (B, s + c); real ones < L

        def scatter_back(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            full = torch.gather(h, 1, slot.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            full = full * valid.unsqueeze(-1).to(h.dtype)
            return full[:, :s], full[:, s:]                        # SuperTokens (B, s, D), tokens (B, c, D)

        bypass = (~merge).unsqueeze(-1)

        def to_slots(h: torch.Tensor) -> torch.Tensor:
            sup_h, tok_h = scatter_back(h)
            return torch.where(bypass, tok_h, torch.matmul(d.cam, sup_h))

        hidden = MappedLayers(enc.hidden, to_slots)                  # only the layers a head reads
        sup_out, tok_out = scatter_back(enc.last)
        encoded = DeferredLast(lambda: self.cau(t, d.cam, sup_out, bypass_out=tok_out, bypass_mask=~merge), hidden)
        bypass_rank = torch.cumsum((~merge).long(), dim=1) - 1
        segments = torch.where(merge, d.assignment, s + bypass_rank)
        return StudentOutput(tokens=tok, encoded=encoded, cam=d.cam,
                             segments=segments, merged=merge, tokens_in_encoder=keep.sum(1),
                             encoder_keep=keep, supertokens_out=sup_out, counts=d.counts,
                             gate_probs=g.probs, gate_loss=g.loss)
