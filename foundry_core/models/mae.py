"""Point-MAE-style control objective: reconstruct the masked groups' points from the context.

Same backbone, sequencer, target/context blocks and predictor as Point-JEPA (models/jepa.py); only
the objective differs: a linear head turns each predicted target token into the k points of its
group (relative to the center) and the loss is the Chamfer L2 distance to the true group. There is
no EMA target: the online encoder is what gets exported and probed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..configs import JEPAConfig
from .backbone import PointBackbone
from .jepa import JEPAPredictor, gather_groups, masked_view


def chamfer_l2(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance with squared L2: pred (N, k, 3), true (N, k', 3) -> scalar
    (mean over sets of mean nearest-neighbour squared distance in both directions)."""
    d = torch.cdist(pred, true).pow(2)                               # (N, k, k')
    return d.min(dim=2).values.mean() + d.min(dim=1).values.mean()


class PointMAE(nn.Module):
    """Context backbone + predictor + point head trained to reconstruct masked groups.

    forward(points (B, N, C)) -> loss (scalar Chamfer L2 on the xyz of the target groups).
    """

    def __init__(self, backbone: PointBackbone, cfg: JEPAConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.group_size = backbone.tokenizer.group_size
        self.predictor = JEPAPredictor(backbone.dim, cfg.predictor_dim, cfg.predictor_depth, cfg.predictor_heads)
        self.head = nn.Linear(backbone.dim, self.group_size * 3)

    @property
    def target(self) -> PointBackbone:
        """The encoder that is probed and exported (the online one: no EMA branch)."""
        return self.backbone

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        view = masked_view(self.backbone, points, self.cfg)
        b, m, lt = view.targets.shape
        pred = self.head(view.predict(self.predictor))    # (B*M, Lt, k*3)
        src = torch.gather(view.order, 1, view.targets.reshape(b, -1))  # target positions -> tokenizer order
        true = gather_groups(view.groups[..., :3].contiguous(), src)    # (B, M*Lt, k, 3)
        k = self.group_size
        return chamfer_l2(pred.float().reshape(-1, k, 3), true.reshape(-1, k, 3).float())

    def update_target(self, step: int, total: int) -> float:
        """No EMA branch; returns 0 (the momentum PretrainTask logs)."""
        return 0.0
