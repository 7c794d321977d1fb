"""Pre-norm transformer encoder (ViT blocks) with ViT-S / ViT-T presets and all hidden states."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import ENCODER_PRESETS as PRESETS


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention. x (B, T, D), optional additive bias (B, 1|H, T, T) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass
class EncoderOutput:
    last: torch.Tensor           # (B, T, D) final LayerNorm'd output
    hidden: Sequence[torch.Tensor]   # depth x (B, T, D) raw output of every block


class DeferredLast(EncoderOutput):
    """An EncoderOutput whose `last` is computed by `last_fn` on first access (and kept): a student's
    CAU, which a head reading only hidden states (segmentation) never pays for. It runs under the
    grad / inference / autocast modes of its creation, wherever it is first read."""

    def __init__(self, last_fn: Callable[[], torch.Tensor], hidden: Sequence[torch.Tensor]):
        self.last_fn, self.hidden, self.computed = last_fn, hidden, None
        self.modes = capture_modes()

    @property
    def last(self) -> torch.Tensor:
        if self.computed is None:
            if torch.compiler.is_exporting():            # traced in place (modes are the tracer's)
                self.computed = self.last_fn()
            else:
                with replay_modes(self.modes):
                    self.computed = self.last_fn()
        return self.computed


AUTOCAST_DEVICES = ("cpu", "cuda")


def capture_modes() -> dict:
    """The autograd / inference-mode / autocast state now (replay_modes restores it)."""
    amp = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in AUTOCAST_DEVICES
           if d == "cpu" or torch.cuda.is_available()}
    return {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(), "autocast": amp}


@contextlib.contextmanager
def replay_modes(modes: dict):
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(modes["inference"]))
        stack.enter_context(torch.set_grad_enabled(modes["grad"]))
        for device, (enabled, dtype) in modes["autocast"].items():
            if (enabled, dtype) != (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)):
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        yield


class MappedLayers(Sequence):
    """hidden states fn(h) of every layer h of `source`, each computed on first access (and kept):
    a head that reads 3 of 12 layers pays for 3 (students map SuperToken states back to the c token
    slots this way)."""

    def __init__(self, source: Sequence[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]):
        self.source, self.fn = source, fn
        self.done: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = i + len(self) if i < 0 else i
        if not 0 <= j < len(self):
            raise IndexError(f"layer {i} of {len(self)}")
        if j not in self.done:
            self.done[j] = self.fn(self.source[j])
        return self.done[j]


def key_padding_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """keep (B, T) bool -> additive attention bias (B, 1, 1, T): 0 for kept keys, a large finite
    negative value for padded ones (finite so exported graphs never produce NaN)."""
    neg = torch.finfo(dtype).min / 2
    return torch.where(keep, 0.0, neg).to(dtype)[:, None, None, :]


class TransformerEncoder(nn.Module):
    """Stack of pre-norm blocks; the positional embedding is added before every block (Point-JEPA),
    or only before the first one (pos_every_layer=False, as in a plain ViT).

    forward(x (B, T, D), pos (B, T, D), keep (B, T) bool | None) -> EncoderOutput
    """

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, pos_every_layer: bool = True):
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.pos_every_layer = pos_every_layer
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformerEncoder":
        if name not in PRESETS:
            raise ValueError(f"unknown encoder preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None = None) -> EncoderOutput:
        bias = None if keep is None else key_padding_bias(keep, x.dtype)
        hidden = []
        for i, blk in enumerate(self.blocks):
            x = blk(x + pos if (self.pos_every_layer or i == 0) else x, bias)
            hidden.append(x)
        return EncoderOutput(last=self.norm(x), hidden=hidden)


def init_weights(m: nn.Module) -> None:
    """ViT initialisation (truncated normal 0.02 Linear weights, zero biases, unit LayerNorm); use with module.apply."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
