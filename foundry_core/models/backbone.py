"""Point backbone = tokenizer + transformer encoder; the teacher and the interface heads consume."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configs import ModelConfig
from .encoder import PRESETS, EncoderOutput, TransformerEncoder
from .tokenizer import PointTokenizer, Tokens


@dataclass
class BackboneOutput:
    tokens: Tokens            # tokenizer output (centers, groups, raw tokens)
    encoded: EncoderOutput    # last (B, c, d) and hidden states depth x (B, c, d)

    @property
    def last(self) -> torch.Tensor:
        return self.encoded.last


def encoder_kwargs(cfg: ModelConfig) -> dict:
    """Resolved encoder size of a ModelConfig (preset plus overrides)."""
    if cfg.encoder not in PRESETS and cfg.encoder != "custom":
        raise ValueError(f"unknown encoder {cfg.encoder!r}; use one of {sorted(PRESETS)} or custom")
    base = dict(PRESETS[cfg.encoder]) if cfg.encoder != "custom" else {}
    for key in ("dim", "depth", "heads"):
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    return {**base, "mlp_ratio": cfg.mlp_ratio, "drop_path": cfg.drop_path, "pos_every_layer": cfg.pos_every_layer}


class PointBackbone(nn.Module):
    """points (B, N, C) -> BackboneOutput. The same interface is offered by distilled students."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        kw = encoder_kwargs(cfg)
        self.dim, self.depth = kw["dim"], kw["depth"]
        self.tokenizer = PointTokenizer(kw["dim"], cfg.num_groups, cfg.group_size, cfg.in_channels)
        self.encoder = TransformerEncoder(**kw)

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None) -> BackboneOutput:
        return self.encode(self.tokenizer(points, generator=generator))

    def encode(self, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
               points: torch.Tensor | None = None) -> BackboneOutput:
        """Encode all c tokens (the interface of students and baselines; a teacher has no budget)."""
        if budget is not None or fusion_threshold is not None:
            raise ValueError("a teacher encodes every token: budget / fusion_threshold need a student")
        return BackboneOutput(tokens=tok, encoded=self.encoder(tok.tokens, tok.pos))


def pooled_features(last: torch.Tensor) -> torch.Tensor:
    """Max + mean pooling of tokens: (B, T, D) -> (B, 2D)."""
    return torch.cat([last.max(dim=1).values, last.mean(dim=1)], dim=-1)
