"""Token-sampling baselines of Foundry Table 5 ("inference from baseline") and the shared base class.

Every baseline of this package is a drop-in for PointBackbone / FoundryStudent: it returns one
output per token slot of the normal tokenization (c slots), so that

  * FMD (stages.distill) compares ``out.last`` (B, c, teacher_dim) slot for slot with the teacher's
    c output tokens computed on the same groups, and
  * the heads (ClassificationHead pools ``.last``, SegmentationHead reads ``.encoded.hidden`` and
    ``.tokens.centers``) work unchanged.

Baselines here:

RandomTokenSampling (paper B.4 "Random Sampling"): c' of the c tokens, drawn uniformly at random
per cloud (torch generator, so seedable), go through the encoder; every dropped slot receives the
output of its nearest kept token (by center distance). ``segments`` is the position (< c') of
that kept token in the encoder sequence.

FewerCenters (paper B.4 "Larger group size", B.2 "FPS-Student"): the same tokenizer weights
tokenize the cloud with c' centers and k' = 2 N / c' neighbours (``overlap`` = 2 adds overlap
between groups), only those c' tokens are encoded. The c' coarse centers are the first c' FPS
centers of the normal c-center tokenization (FPS is sequential, so the first c' of a c-point FPS
run *are* a c'-point FPS run from the same start; the paper shares "the first c sampled centers
up to c_2"). How the c-slot output is defined: ``.tokens`` is the normal c-center tokenization
(the teacher's groups) and each of the c slots receives the output of the coarse token whose
center is nearest to the slot's center (``upsample="nearest"``, every slot that is itself a coarse
center gets exactly its own output), or a 3-NN inverse-distance interpolation of the coarse
outputs (``upsample="idw"``, the "feature upsampler" of paper B.2). Returning only the c' coarse
tokens with their own centers would also satisfy the heads (the classification head pools, the
segmentation head interpolates from whatever centers it is given), but FMD needs the teacher's c
slots and the distillation stage hands the student the teacher's tokenization, so the c-slot form
is the one used everywhere; the coarse tokenization is kept in ``out.info["coarse_tokens"]``.
The max pooling of the classification head is unchanged by the duplication; the mean weights
every coarse token by the number of fine slots it covers (roughly the surface it covers).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...configs import ModelConfig
from ..distillable import FreezableBackbone
from ..encoder import EncoderOutput, TransformerEncoder
from ..sampling import gather_points
from ..tokenizer import PointTokenizer, Tokens, sanitize_points


@dataclass
class BaselineOutput:
    """Mirror of StudentOutput / BackboneOutput with every tensor on the c token slots."""

    tokens: Tokens                    # the normal (c-center) tokenization
    encoded: EncoderOutput            # last (B, c, dim), hidden depth x (B, c, hidden_dim)
    segments: torch.Tensor            # (B, c) int64: encoder token each slot was read from
    tokens_in_encoder: torch.Tensor   # (B,) int64: tokens the encoder outputs (paper's s / c')
    gate_loss: torch.Tensor           # 0-dim zero (no gate)
    merged: torch.Tensor | None = None  # (B, c) bool: slot shares its encoder token / was dropped
    gate_probs: torch.Tensor | None = None
    cam: torch.Tensor | None = None   # (B, c, s) one-hot slot -> encoder-token map where defined
    info: dict = field(default_factory=dict)  # method-specific extras (kept indices, sizes, ...)

    @property
    def last(self) -> torch.Tensor:
        return self.encoded.last


def gather_slots(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h (B, T, D), index (B, c) into T -> (B, c, D)."""
    return torch.gather(h, 1, index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def nearest_index(queries: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Index of the nearest ref for every query: (B, M, 3), (B, K, 3) -> (B, M) int64 (exact)."""
    d = ((queries.unsqueeze(2) - refs.unsqueeze(1)) ** 2).sum(-1)
    return d.argmin(-1)


class TokenReductionBackbone(FreezableBackbone):
    """Shared plumbing of the baselines: tokenizer + (pre-trained) encoder with the student's API.

    tokenizer.dim != encoder.dim adds linear projections of tokens and positions (as in
    FoundryStudent); teacher_dim != encoder.dim adds a linear map of the final output to the
    teacher width (FMD against a wider teacher). ``dim`` is the width of ``.last`` and
    ``hidden_dim`` the encoder width (width of ``.encoded.hidden``).
    """

    kind = "base"               # the method's name (checkpoint metadata)
    backbone_kind = "baseline"
    exportable = False           # PyTorch only

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, teacher_dim: int | None = None,
                 cfg: ModelConfig | None = None):
        super().__init__()
        d_tok, d = tokenizer.dim, encoder.dim
        teacher_dim = d if teacher_dim is None else int(teacher_dim)
        self.cfg = cfg
        self.tokenizer, self.encoder = tokenizer, encoder
        self.teacher_dim = teacher_dim
        self.dim, self.hidden_dim, self.depth = teacher_dim, d, encoder.depth
        self.token_proj = nn.Identity() if d_tok == d else nn.Linear(d_tok, d)
        self.pos_proj = nn.Identity() if d_tok == d else nn.Linear(d_tok, d)
        self.out_proj = nn.Identity() if teacher_dim == d else nn.Linear(d, teacher_dim)
        self.init_kwargs: dict = {"teacher_dim": teacher_dim}
        self.copied_from_teacher: list[str] = []

    # ------------------------------------------------------------------ forward
    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               **kwargs) -> BaselineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _check_no_gate(fusion_threshold: float | None) -> None:
        if fusion_threshold is not None:
            raise ValueError("fusion_threshold needs a gated Foundry student; baselines have no gate")

    def _output(self, tok: Tokens, enc: EncoderOutput, index: torch.Tensor, segments: torch.Tensor,
                tokens_in_encoder: torch.Tensor, merged: torch.Tensor | None, cam: torch.Tensor | None = None,
                info: dict | None = None) -> BaselineOutput:
        """Map encoder outputs (B, T, D) back to the c slots with index (B, c) into T."""
        hidden = [gather_slots(h, index) for h in enc.hidden]
        last = self.out_proj(gather_slots(enc.last, index))
        return BaselineOutput(tokens=tok, encoded=EncoderOutput(last=last, hidden=hidden), segments=segments,
                              tokens_in_encoder=tokens_in_encoder, gate_loss=last.new_zeros(()), merged=merged,
                              cam=cam, info=info or {})


# ================================================================================ random sampling
class RandomTokenSampling(TokenReductionBackbone):
    """Keep ``num_keep`` (c') of the c tokens, uniformly at random per cloud, in training and at
    inference; dropped slots copy the output of their nearest kept token (center distance)."""

    kind = "random"

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, num_keep: int,
                 teacher_dim: int | None = None, cfg: ModelConfig | None = None):
        super().__init__(tokenizer, encoder, teacher_dim, cfg)
        if num_keep < 1:
            raise ValueError("num_keep must be >= 1")
        self.num_keep = int(num_keep)
        self.init_kwargs.update(num_keep=self.num_keep)

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None, budget: int | None = None,
                fusion_threshold: float | None = None) -> BaselineOutput:
        tok = self.tokenizer(points, generator=generator)
        return self.encode(tok, budget=budget, fusion_threshold=fusion_threshold, generator=generator)

    def sample(self, b: int, c: int, keep: int, device: torch.device,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, keep) distinct slot indices per cloud, uniformly at random, sorted ascending.
        Drawn on the CPU (from ``generator`` or the global RNG) so results do not depend on the device."""
        noise = torch.rand(b, c, generator=generator)
        idx = noise.argsort(dim=1)[:, :keep]
        return idx.sort(dim=1).values.to(device)

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               generator: torch.Generator | None = None, kept_idx: torch.Tensor | None = None,
               points: torch.Tensor | None = None) -> BaselineOutput:
        """kept_idx (B, c') overrides the random draw (e.g. to reuse one draw for several models)."""
        self._check_no_gate(fusion_threshold)
        t, p = self.token_proj(tok.tokens), self.pos_proj(tok.pos)
        b, c, _ = t.shape
        keep = min(self.num_keep, c) if budget is None else max(1, min(self.num_keep, int(budget), c))
        if kept_idx is None:
            kept_idx = self.sample(b, c, keep, t.device, generator)
        keep = kept_idx.shape[1]
        enc = self.encoder(gather_slots(t, kept_idx), gather_slots(p, kept_idx))
        # slot -> nearest kept token (position in the kept sequence); kept slots map to themselves
        segments = nearest_index(tok.centers, gather_slots(tok.centers, kept_idx))
        own = torch.arange(keep, device=t.device).unsqueeze(0).expand(b, -1)
        segments = segments.scatter(1, kept_idx, own)
        is_kept = torch.zeros(b, c, dtype=torch.bool, device=t.device).scatter(1, kept_idx, True)
        cam = torch.nn.functional.one_hot(segments, keep).to(t.dtype)
        return self._output(tok, enc, segments, segments, torch.full((b,), keep, dtype=torch.long, device=t.device),
                            merged=~is_kept, cam=cam, info={"kept_idx": kept_idx})


# ================================================================================ fewer centers
class FewerCenters(TokenReductionBackbone):
    """Tokenize with c' = ``num_centers`` centers and k' = overlap * N / c' neighbours (paper: k = 2 N / c)
    using the same tokenizer weights, encode the c' tokens, map back to the c normal slots.

    encode(tok, points=...) needs the cloud for the coarse kNN. When ``points`` is not given (the
    distillation stage only passes the tokenizer output), the cloud is rebuilt from the fine groups:
    the union of the c * k group members, de-duplicated by their input index. With the usual
    c * k = 2 N this is almost all of the cloud; points in no fine group are then not seen, and N
    in the k' rule is ``num_points`` when set, else the largest number of distinct members.
    ``group_size`` fixes k' instead of the rule.
    """

    kind = "fewer_centers"

    def __init__(self, tokenizer: PointTokenizer, encoder: TransformerEncoder, num_centers: int,
                 overlap: float = 2.0, group_size: int | None = None, upsample: str = "nearest",
                 num_points: int | None = None, teacher_dim: int | None = None, cfg: ModelConfig | None = None):
        super().__init__(tokenizer, encoder, teacher_dim, cfg)
        if num_centers < 1:
            raise ValueError("num_centers must be >= 1")
        if upsample not in ("nearest", "idw"):
            raise ValueError(f"upsample must be 'nearest' or 'idw', got {upsample!r}")
        self.num_centers, self.overlap, self.group_size = int(num_centers), float(overlap), group_size
        self.upsample, self.num_points = upsample, num_points
        self.init_kwargs.update(num_centers=self.num_centers, overlap=self.overlap, group_size=group_size,
                                upsample=upsample, num_points=num_points)

    def group_size_for(self, n: int) -> int:
        """k' for a cloud of n points: the fixed group_size, else floor(overlap * n / c'), within [1, n]."""
        k = self.group_size if self.group_size is not None else int(self.overlap * n / self.num_centers)
        return max(1, min(int(k), n))

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None, budget: int | None = None,
                fusion_threshold: float | None = None) -> BaselineOutput:
        points, _ = sanitize_points(points, generator)  # one cloud shared by both tokenizations
        tok = self.tokenizer(points, generator=generator)
        return self.encode(tok, budget=budget, fusion_threshold=fusion_threshold, points=points)

    @staticmethod
    def cloud_from_groups(tok: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild the cloud from the fine groups: (B, c*k, C) absolute points and (B, c*k) bool mask
        of the first occurrence of every input point (duplicates are masked)."""
        g = tok.groups
        b, c, k, ch = g.shape
        xyz = g[..., :3] + tok.centers.unsqueeze(2)
        pts = torch.cat([xyz, g[..., 3:]], dim=-1).reshape(b, c * k, ch)
        idx = tok.group_idx.reshape(b, c * k)
        order = idx.argsort(dim=1, stable=True)
        srt = idx.gather(1, order)
        first_sorted = torch.ones_like(srt, dtype=torch.bool)
        first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
        first = torch.zeros_like(first_sorted).scatter(1, order, first_sorted)
        return pts, first

    def coarse_tokens(self, tok: Tokens, points: torch.Tensor | None = None) -> Tokens:
        """The c'-center tokenization sharing the first c' FPS centers of ``tok``."""
        c = tok.centers.shape[1]
        cc = self.num_centers
        if cc > c:
            raise ValueError(f"FewerCenters needs c' = {cc} <= c = {c} (its centers are a prefix of the FPS order)")
        centers, center_idx = tok.centers[:, :cc], tok.center_idx[:, :cc]
        if points is not None:
            pts = points
            valid = None
            n = points.shape[1]
        else:
            pts, valid = self.cloud_from_groups(tok)
            counts = valid.sum(1)
            n = self.num_points or int(counts.max())
            n = min(n, int(counts.min()))  # never ask for more neighbours than distinct points
        k = self.group_size_for(n)
        with torch.no_grad():
            d = ((centers.unsqueeze(2) - pts[..., :3].unsqueeze(1)) ** 2).sum(-1)   # (B, c', M)
            if valid is not None:
                d = d.masked_fill(~valid.unsqueeze(1), float("inf"))
            group_idx = d.topk(k, dim=-1, largest=False, sorted=True).indices       # (B, c', k')
        groups = gather_points(pts, group_idx)
        rel = groups[..., :3] - centers.unsqueeze(2)
        feats = torch.cat([rel, groups[..., 3:]], dim=-1) if pts.shape[-1] > 3 else rel
        if valid is not None:  # report indices into the input cloud
            group_idx = torch.gather(tok.group_idx.reshape(tok.group_idx.shape[0], -1), 1,
                                     group_idx.flatten(1)).view_as(group_idx)
        return Tokens(tokens=self.tokenizer.encoder(feats), pos=self.tokenizer.pos_embed(centers), centers=centers,
                      center_idx=center_idx, group_idx=group_idx, groups=feats)

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None, generator: torch.Generator | None = None) -> BaselineOutput:
        self._check_no_gate(fusion_threshold)
        if budget is not None and budget < self.num_centers:
            raise ValueError(f"token budget {budget} is smaller than the number of centers {self.num_centers}")
        coarse = self.coarse_tokens(tok, points)
        t, p = self.token_proj(coarse.tokens), self.pos_proj(coarse.pos)
        b, cc = t.shape[:2]
        enc = self.encoder(t, p)
        segments = nearest_index(tok.centers, coarse.centers)                        # (B, c) in [0, c')
        segments = segments.scatter(1, torch.arange(cc, device=t.device).unsqueeze(0).expand(b, -1),
                                    torch.arange(cc, device=t.device).unsqueeze(0).expand(b, -1))
        n_enc = torch.full((b,), cc, dtype=torch.long, device=t.device)
        merged = torch.ones_like(segments, dtype=torch.bool)
        merged[:, :cc] = False
        info = {"coarse_tokens": coarse, "group_size": coarse.group_idx.shape[-1]}
        if self.upsample == "nearest":
            cam = torch.nn.functional.one_hot(segments, cc).to(t.dtype)
            return self._output(tok, enc, segments, segments, n_enc, merged, cam=cam, info=info)
        w = idw_weights(tok.centers, coarse.centers)                                  # (B, c, c')
        hidden = [torch.matmul(w, h) for h in enc.hidden]
        last = self.out_proj(torch.matmul(w, enc.last))
        return BaselineOutput(tokens=tok, encoded=EncoderOutput(last=last, hidden=hidden), segments=segments,
                              tokens_in_encoder=n_enc, gate_loss=last.new_zeros(()), merged=merged, cam=w, info=info)


def idw_weights(queries: torch.Tensor, refs: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Dense (B, M, K) inverse-squared-distance weights over the k nearest refs (rows sum to 1); a
    query on top of a ref gets (numerically) that ref's value. Same rule as heads.propagate_to_points."""
    k = min(k, refs.shape[1])
    d = ((queries.unsqueeze(2) - refs.unsqueeze(1)) ** 2).sum(-1)                   # (B, M, K)
    near = d.topk(k, dim=-1, largest=False).indices
    inv = 1.0 / d.clamp_min(1e-10)
    mask = torch.zeros_like(d, dtype=torch.bool).scatter(-1, near, True)
    w = torch.where(mask, inv, torch.zeros_like(inv))
    return w / w.sum(-1, keepdim=True)
