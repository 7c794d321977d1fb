"""The Backbone interface (teacher, Foundry student, every token-reduction baseline) and the
teacher's PointBackbone = tokenizer + transformer encoder."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configs import ModelConfig
from .encoder import PRESETS, EncoderOutput, TransformerEncoder
from .tokenizer import PointTokenizer, Tokens


@dataclass
class BackboneOutput:
    """What a teacher's encode returns. Students (StudentOutput) and baselines (BaselineOutput)
    return the same fields: tokens, encoded, last, segments and tokens_in_encoder."""

    tokens: Tokens            # tokenizer output (centers, groups, raw tokens)
    encoded: EncoderOutput    # last (B, c, d) and hidden states depth x (B, c, d)

    @property
    def last(self) -> torch.Tensor:
        return self.encoded.last

    @property
    def segments(self) -> torch.Tensor:
        """(B, c) int64: every token is its own segment (0..c-1; graph-exportable, no arange)."""
        ones = torch.ones_like(self.encoded.last[..., 0], dtype=torch.int64)
        return torch.cumsum(ones, dim=1) - 1

    @property
    def tokens_in_encoder(self) -> torch.Tensor:
        """(B,) int64: all c tokens enter the encoder."""
        return torch.ones_like(self.encoded.last[..., 0], dtype=torch.int64).sum(1)


class Backbone(nn.Module):
    """The interface every backbone offers the heads, probes, predictor and exporter.

    Attributes: ``tokenizer`` (points (B, N, C) -> Tokens with c centers), ``dim`` (width of
    ``output.last``), ``hidden_dim`` (width of ``output.encoded.hidden``, the encoder's width),
    ``backbone_kind`` ("teacher", "student", "gated_student" or "baseline") and ``exportable``
    (runtime/export.py writes it as one graph). ``encode`` maps Tokens to an output with
    ``tokens, encoded, last (B, c, dim), segments (B, c), tokens_in_encoder (B,)``.
    """

    backbone_kind: str = "teacher"
    exportable: bool = True
    tokenizer: PointTokenizer
    dim: int
    hidden_dim: int

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Encoder stage on given tokens (budget / fusion_threshold: gated students only;
        points / generator: used by baselines that re-sample)."""
        raise NotImplementedError

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None, budget: int | None = None,
                fusion_threshold: float | None = None, num_centers: int | None = None):
        """points (B, N, C) -> the backbone's output: tokenize (num_centers: c, default the
        tokenizer's), then encode."""
        tok = self.tokenizer(points, num_groups=num_centers, generator=generator)
        return self.encode(tok, budget=budget, fusion_threshold=fusion_threshold)

    @property
    def budget_adjustable(self) -> bool:
        """Whether encode() takes a token budget and a fusion threshold."""
        return self.backbone_kind == "gated_student"

    def budget_range(self, num_centers: int) -> tuple[int, int]:
        """(min, max) token budget for clouds of up to num_centers centers; equal when fixed
        (the budget reported for a fixed-count backbone)."""
        return num_centers, num_centers

    def rebuild_meta(self) -> dict:
        """Checkpoint metadata beyond the ModelConfig that rebuilds this backbone (students, baselines)."""
        return {}


def encoder_kwargs(cfg: ModelConfig) -> dict:
    """Resolved encoder size of a ModelConfig (preset plus overrides)."""
    if cfg.encoder not in PRESETS and cfg.encoder != "custom":
        raise ValueError(f"unknown encoder {cfg.encoder!r}; use one of {sorted(PRESETS)} or custom")
    base = dict(PRESETS[cfg.encoder]) if cfg.encoder != "custom" else {}
    for key in ("dim", "depth", "heads"):
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    return {**base, "mlp_ratio": cfg.mlp_ratio, "drop_path": cfg.drop_path, "pos_every_layer": cfg.pos_every_layer}


class PointBackbone(Backbone):
    """The teacher: points (B, N, C) -> BackboneOutput (every token encoded)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        kw = encoder_kwargs(cfg)
        self.dim, self.depth = kw["dim"], kw["depth"]
        self.hidden_dim = self.dim
        self.tokenizer = PointTokenizer(kw["dim"], cfg.num_groups, cfg.group_size, cfg.in_channels)
        self.encoder = TransformerEncoder(**kw)

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None, generator: torch.Generator | None = None) -> BackboneOutput:
        """Encode all c tokens (the interface of students and baselines; a teacher has no budget)."""
        if budget is not None or fusion_threshold is not None:
            raise ValueError("a teacher encodes every token: budget / fusion_threshold need a student")
        return BackboneOutput(tokens=tok, encoded=self.encoder(tok.tokens, tok.pos))


def pooled_features(last: torch.Tensor) -> torch.Tensor:
    """Max + mean pooling of tokens: (B, T, D) -> (B, 2D)."""
    return torch.cat([last.max(dim=1).values, last.mean(dim=1)], dim=-1)
