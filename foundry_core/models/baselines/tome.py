"""Token Merging (ToMe, Bolya et al., ICLR 2023) on the Foundry/Point-JEPA encoder (paper B.2, Table 5).

In block l, after the attention branch has been added to the residual stream, ``r_l`` tokens are
merged by bipartite soft matching:

  * metric = keys of the block's attention averaged over heads (B, T, head_dim), cosine-normalised;
  * tokens are alternated into sets A (even positions) and B (odd positions); every A token picks its
    most similar B token; the r A tokens with the highest similarity are merged into their B match;
  * merged features are size-weighted averages (x <- sum(size * x) / sum(size)); sizes add up;
  * proportional attention: log(size) of every key is added to the attention logits of later
    blocks, so a token standing for m merged tokens weighs like m identical keys;
  * the positional embedding (added before every block) is merged with the same weights.

Shapes are fixed per layer (r is a Python int from the schedule): argsort / gather / scatter_add
only. A source map ``slot -> current token`` (B, c) is updated at every merge, so the output of
every block and the final (LayerNorm'd) output are read back at the c original token slots: a
merged slot receives the state of the token it was merged into ("for merged tokens, we put the
information of the corresponding remaining token", paper B.2).

The schedule: r_schedule[l] tokens are removed in block l (missing entries are 0); each r is
capped at floor(T / 2) as in ToMe. For 16 of 64 tokens the paper uses [32, 16], for 1 token
[32, 16, 8, 4, 2, 1]; :func:`halving_schedule` builds these.

ToMeEncoder reuses a TransformerEncoder's parameters (norm1, attn.qkv, attn.proj, norm2, mlp,
drop_path of every Block and the final norm): no parameter is duplicated, so a ToMe model loads the
weights of any PointBackbone encoder, runs "inference-only" from a fine-tuned / pre-trained
backbone, and is trainable end to end for FMD (gradients flow through the weighted merges; the
matching itself, as in ToMe, is computed without gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...configs import ModelConfig
from ..encoder import Block, EncoderOutput, TransformerEncoder
from ..tokenizer import PointTokenizer, Tokens
from .token_sampling import BaselineOutput, TokenReductionBackbone, gather_slots


def halving_schedule(c: int, target: int) -> list[int]:
    """Per-layer r that halves the tokens until ``target`` remain: (64, 16) -> [32, 16],
    (64, 1) -> [32, 16, 8, 4, 2, 1]."""
    if not 1 <= target <= c:
        raise ValueError(f"target tokens {target} must be within [1, {c}]")
    out, t = [], c
    while t > target:
        r = min(t // 2, t - target)
        out.append(r)
        t -= r
    return out


def proportional_bias(size: torch.Tensor) -> torch.Tensor:
    """Token sizes (B, T, 1) -> additive attention bias (B, 1, 1, T) = log(size) of every key."""
    return size.log()[:, None, None, :, 0]


@dataclass
class Merge:
    """One bipartite soft matching step on T tokens (fixed shapes)."""

    unm_idx: torch.Tensor   # (B, Ta - r, 1) A positions kept
    src_idx: torch.Tensor   # (B, r, 1) A positions merged away
    dst_idx: torch.Tensor   # (B, r, 1) B positions they are merged into
    r: int
    t: int

    @property
    def t_out(self) -> int:
        return self.t - self.r

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Sum-merge x (B, T, C) -> (B, T - r, C): [unmerged A..., B (+ merged A)...]."""
        src, dst = x[:, ::2], x[:, 1::2]
        b, ta, ch = src.shape
        unm = src.gather(1, self.unm_idx.expand(b, ta - self.r, ch))
        moved = src.gather(1, self.src_idx.expand(b, self.r, ch))
        dst = dst.scatter_add(1, self.dst_idx.expand(b, self.r, ch), moved)
        return torch.cat([unm, dst], dim=1)

    def new_index(self) -> torch.Tensor:
        """(B, T) int64: index in the merged sequence of every token before the merge."""
        b = self.unm_idx.shape[0]
        ta = (self.t + 1) // 2
        dev = self.unm_idx.device
        n_unm = ta - self.r
        a_new = torch.empty(b, ta, dtype=torch.long, device=dev)
        a_new.scatter_(1, self.unm_idx[..., 0], torch.arange(n_unm, device=dev).expand(b, -1))
        a_new.scatter_(1, self.src_idx[..., 0], n_unm + self.dst_idx[..., 0])
        b_new = n_unm + torch.arange(self.t // 2, device=dev).expand(b, -1)
        out = torch.empty(b, self.t, dtype=torch.long, device=dev)
        out[:, ::2] = a_new
        out[:, 1::2] = b_new
        return out


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge | None:
    """ToMe matching on metric (B, T, C): None when nothing is merged (r <= 0 or T < 2)."""
    t = metric.shape[1]
    r = min(int(r), t // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, b = m[:, ::2], m[:, 1::2]
        scores = a @ b.transpose(-1, -2)                       # (B, Ta, Tb)
        node_max, node_idx = scores.max(dim=-1)                # best B for every A
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
        unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
        dst_idx = node_idx[..., None].gather(1, src_idx)
    return Merge(unm_idx=unm_idx, src_idx=src_idx, dst_idx=dst_idx, r=r, t=t)


def merge_wavg(mrg: Merge, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: x (B, T, C), size (B, T, 1) -> (B, T - r, C), (B, T - r, 1)."""
    x = mrg.merge(x * size)
    size = mrg.merge(size)
    return x / size, size


def tome_attention(blk: Block, x: torch.Tensor, size: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """blk.attn on x (B, T, D) with proportional attention (size (B, T, 1) or None = all ones).
    Returns (attention output (B, T, D), metric = keys averaged over heads (B, T, D / H))."""
    attn = blk.attn
    b, t, d = x.shape
    q, k, v = attn.qkv(x).reshape(b, t, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    bias = None if size is None else proportional_bias(size).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj(out.transpose(1, 2).reshape(b, t, d)), k.mean(1)


@dataclass
class ToMeTrace:
    """What happened inside the ToMe encoder (per block, after its merge)."""

    source: torch.Tensor            # (B, c) final token index of every slot
    sources: list[torch.Tensor]     # depth x (B, c) token index of every slot after block l
    sizes: list[torch.Tensor]       # depth x (B, T_l, 1) token sizes after block l
    tokens_per_layer: list[int]     # T_l after block l


def tome_encode(encoder: TransformerEncoder, x: torch.Tensor, pos: torch.Tensor, r_schedule: list[int],
                prop_attn: bool = True) -> tuple[EncoderOutput, ToMeTrace]:
    """Run ``encoder``'s blocks with token merging. x, pos (B, c, D) -> (EncoderOutput on the c slots, trace).

    With r = 0 everywhere the computation is exactly TransformerEncoder.forward (same ops)."""
    b, c, _ = x.shape
    if len(r_schedule) > len(encoder.blocks):
        raise ValueError(f"r_schedule has {len(r_schedule)} entries for {len(encoder.blocks)} blocks")
    size = x.new_ones(b, c, 1)
    merged_yet = False                                     # sizes all 1 -> no bias (exactly the plain encoder)
    source = torch.arange(c, device=x.device).unsqueeze(0).expand(b, -1)
    hidden, sources, sizes, counts = [], [], [], []
    for i, blk in enumerate(encoder.blocks):
        h = x + pos if (encoder.pos_every_layer or i == 0) else x
        a, metric = tome_attention(blk, blk.norm1(h), size if (prop_attn and merged_yet) else None)
        h = h + blk.drop_path(a)
        r = r_schedule[i] if i < len(r_schedule) else 0
        mrg = bipartite_soft_matching(metric, r)
        if mrg is not None:
            # the residual stream already contains pos; carry the merged pos for the next blocks
            both, new_size = merge_wavg(mrg, torch.cat([h, pos], dim=-1), size)
            h, pos = both.split([h.shape[-1], pos.shape[-1]], dim=-1)
            source = torch.gather(mrg.new_index(), 1, source)
            size, merged_yet = new_size, True
        x = h + blk.drop_path(blk.mlp(blk.norm2(h)))
        hidden.append(gather_slots(x, source))
        sources.append(source)
        sizes.append(size)
        counts.append(x.shape[1])
    last = gather_slots(encoder.norm(x), source)
    return (EncoderOutput(last=last, hidden=hidden),
            ToMeTrace(source=source, sources=sources, sizes=sizes, tokens_per_layer=counts))


class ToMeEncoder(nn.Module):
    """A TransformerEncoder run with token merging; holds the encoder itself (no copied weights).

    forward(x (B, c, D), pos (B, c, D)) -> (EncoderOutput on the c slots, ToMeTrace)."""

    def __init__(self, encoder: TransformerEncoder, r_schedule: list[int] | None = None, prop_attn: bool = True):
        super().__init__()
        self.encoder = encoder
        self.r_schedule = list(r_schedule or [])
        self.prop_attn = prop_attn
        self.dim, self.depth, self.heads = encoder.dim, encoder.depth, encoder.heads

    def forward(self, x: torch.Tensor, pos: torch.Tensor, r_schedule: list[int] | None = None
                ) -> tuple[EncoderOutput, ToMeTrace]:
        sched = self.r_schedule if r_schedule is None else list(r_schedule)
        return tome_encode(self.encoder, x, pos, sched, self.prop_attn)


class ToMeBackbone(TokenReductionBackbone):
    """Tokenizer + encoder with ToMe merging, the student interface on the c slots.

    r_schedule: tokens removed per block; or target_tokens: the halving schedule from the tokenizer's
    c down to that many tokens (paper: 16 -> [32, 16], 1 -> [32, 16, 8, 4, 2, 1] for c = 64).
    ``from_teacher(backbone, ...)`` without training is the paper's "inference from baseline" ToMe;
    the same module distilled with FMD is "ToMe - trained using FMD". ``.encoder`` stays a plain
    TransformerEncoder (state-dict compatible with PointBackbone).
    """

    kind = "tome"

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, r_schedule: list[int] | None = None,
                 target_tokens: int | None = None, prop_attn: bool = True, teacher_dim: int | None = None,
                 cfg: ModelConfig | None = None):
        super().__init__(tokenizer, encoder, teacher_dim, cfg)
        if r_schedule is not None and target_tokens is not None:
            raise ValueError("give r_schedule or target_tokens, not both")
        self.target_tokens = None if target_tokens is None else int(target_tokens)
        if r_schedule is None:
            r_schedule = [] if target_tokens is None else halving_schedule(tokenizer.num_groups, target_tokens)
        if len(r_schedule) > encoder.depth:
            raise ValueError(f"r_schedule has {len(r_schedule)} entries for {encoder.depth} blocks")
        if any(int(r) < 0 for r in r_schedule):
            raise ValueError("r_schedule entries must be >= 0")
        self.r_schedule = [int(r) for r in r_schedule]
        self.prop_attn = bool(prop_attn)
        if self.target_tokens is None:
            self.init_kwargs.update(r_schedule=list(self.r_schedule), prop_attn=self.prop_attn)
        else:
            self.init_kwargs.update(target_tokens=self.target_tokens, prop_attn=self.prop_attn)

    def schedule(self, c: int) -> list[int]:
        """Tokens removed per block for c input tokens: with target_tokens, the halving schedule from
        this call's c (clouds tokenized with more or fewer centers than the tokenizer's default)."""
        if self.target_tokens is None:
            return self.r_schedule
        sched = halving_schedule(c, min(self.target_tokens, c))
        if len(sched) > self.encoder.depth:
            raise ValueError(f"ToMe cannot reach {self.target_tokens} tokens from {c} in {self.encoder.depth} blocks "
                             f"(at most half of the tokens merge per block; needs {len(sched)})")
        return sched

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               r_schedule: list[int] | None = None, points: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> BaselineOutput:
        """r_schedule overrides the module's schedule for this call."""
        self._check_no_gate(fusion_threshold)
        t, p = self.token_proj(tok.tokens), self.pos_proj(tok.pos)
        sched = self.schedule(t.shape[1]) if r_schedule is None else [int(r) for r in r_schedule]
        enc, trace = tome_encode(self.encoder, t, p, sched, self.prop_attn)
        b, c = t.shape[:2]
        t_final = trace.tokens_per_layer[-1]
        if budget is not None and budget < t_final:
            raise ValueError(f"token budget {budget} is smaller than the {t_final} tokens ToMe keeps")
        final_size = trace.sizes[-1][..., 0]                               # (B, T_final)
        merged = torch.gather(final_size, 1, trace.source) > 1
        cam = F.one_hot(trace.source, t_final).to(t.dtype)
        last = self.out_proj(enc.last)
        return BaselineOutput(tokens=tok, encoded=EncoderOutput(last=last, hidden=enc.hidden),
                              segments=trace.source, tokens_in_encoder=torch.full((b,), t_final, dtype=torch.long,
                                                                                  device=t.device),
                              gate_loss=last.new_zeros(()), merged=merged, cam=cam,
                              info={"trace": trace, "tokens_per_layer": trace.tokens_per_layer})
