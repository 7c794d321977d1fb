"""Cross-Attention Upsampling (CAU, Foundry Sec. 3.3): back from s SuperTokens to c token slots.

    Y_hat = MLP(T + CAM . S_out)          (B, c, out_dim),  MLP = Linear -> GELU -> Linear
    Y_hat = W . CAM . S_out + MLP(...)    with skip=True (W = identity when widths match)

The CAM computed by DSO routes each token slot to the encoder output of its SuperToken; the
residual with the tokenizer tokens T (no positional embedding) reinjects local detail. Tokens
that bypassed the compression (Foundry-Gate) have a zero CAM row; the caller supplies their own
encoder outputs, already placed in their token slots, as `bypass_out`.

skip=True (an option, not in the paper) adds the routed encoder output itself and zero-initialises
the MLP's last layer: a teacher-initialised student then starts at "every token gets its
SuperToken's teacher output" and the MLP learns only the per-token correction. With the paper's
form the MLP starts random and must learn the whole map into the teacher's token space.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import init_weights


class CAU(nn.Module):
    """forward(tokens (B, c, d), cam (B, c, s), supertokens_out (B, s, d),
    bypass_out (B, c, d) | None, bypass_mask (B, c) bool | None) -> (B, c, out_dim).

    bypass_mask True marks slots whose feature is taken from bypass_out instead of CAM . S_out.
    Without a mask, bypass_out is added to CAM . S_out (it must then be zero in merged slots).
    """

    def __init__(self, dim: int, out_dim: int, hidden_ratio: float = 4, out_norm: bool = False,
                 skip: bool = False):
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.dim, self.out_dim = dim, out_dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.norm = nn.LayerNorm(out_dim) if out_norm else nn.Identity()
        self.skip = None
        if skip:
            self.skip = nn.Identity() if dim == out_dim else nn.Linear(dim, out_dim)
        self.apply(init_weights)
        if skip:
            nn.init.zeros_(self.mlp[-1].weight)

    def upsample(self, cam: torch.Tensor, supertokens_out: torch.Tensor, bypass_out: torch.Tensor | None = None,
                 bypass_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features routed to every token slot: CAM . S_out, bypass slots replaced by bypass_out."""
        up = torch.matmul(cam, supertokens_out)
        if bypass_out is None:
            return up
        if bypass_mask is None:
            return up + bypass_out
        return torch.where(bypass_mask.unsqueeze(-1), bypass_out, up)

    def forward(self, tokens: torch.Tensor, cam: torch.Tensor, supertokens_out: torch.Tensor,
                bypass_out: torch.Tensor | None = None, bypass_mask: torch.Tensor | None = None) -> torch.Tensor:
        up = self.upsample(cam, supertokens_out, bypass_out, bypass_mask)
        y = self.mlp(tokens + up)
        return self.norm(y if self.skip is None else y + self.skip(up))
