"""Downstream heads: classification, part segmentation, scene semantic segmentation, and the
segmentation MLP folded into plain GEMMs for inference (FoldedPointMLP)."""
from __future__ import annotations

import torch
from torch import nn

from .batchnorm_bank import BatchNormBank
from .backbone import Backbone, BackboneOutput, pooled_features
from .local_shape import LOCAL_SHAPE_DIM, local_shape_batch
from .sampling import knn


class ClassificationHead(nn.Module):
    """concat(max, mean) of output tokens (B, 2D) -> logits (B, K)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.5, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, out: BackboneOutput, points: torch.Tensor, category: torch.Tensor | None = None,
                nn_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(pooled_features(out.last))


def interpolation_weights(centers: torch.Tensor, points: torch.Tensor, k: int = 3,
                          idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest centers of each point and their inverse-distance weights.

    centers (B, c, 3), points (B, N, 3) -> idx (B, N, k) int64, weights (B, N, k) summing to 1;
    idx: those centers when already known (e.g. from a kd-tree outside a graph).
    """
    if idx is None:
        idx = knn(centers, points, min(k, centers.shape[1]))        # (B, N, k)
    return idx, inverse_distance_weights(((points.unsqueeze(2) - _gather_rows(centers, idx)) ** 2).sum(-1))


def inverse_distance_weights(sq_dist: torch.Tensor) -> torch.Tensor:
    """Squared distances (..., k) of a point to its k nearest centers -> interpolation weights
    (..., k) proportional to 1 / d^2 (d^2 clamped at 1e-10), summing to 1."""
    w = 1.0 / sq_dist.clamp_min(1e-10)
    return w / w.sum(-1, keepdim=True)


def interpolate(feats: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """feats (B, c, D), idx / weights (B, N, k) from `interpolation_weights` -> (B, N, D)."""
    return (_gather_rows(feats, idx) * weights.unsqueeze(-1)).sum(2)


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (B, c, D), idx (B, N, k) -> (B, N, k, D), gathered from the flattened (B * c, D) table:
    no (B, N, c, D) expansion is ever built."""
    b, n, kk = idx.shape
    c = table.shape[1]
    flat = (idx + (torch.arange(b, device=idx.device) * c).view(b, 1, 1)).reshape(-1)
    return table.reshape(b * c, -1).index_select(0, flat).view(b, n, kk, -1)


def nearest_offsets(centers: torch.Tensor, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Offset of every point from its nearest center: centers (B, c, 3), points (B, N, 3), idx (B, N, k)
    nearest first -> (B, N, 3)."""
    return points - _gather_rows(centers, idx[..., :1])[:, :, 0]


def propagate_to_points(feats: torch.Tensor, centers: torch.Tensor, points: torch.Tensor, k: int = 3,
                        idx: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-distance interpolation of center features to points: feats (B, c, D), centers
    (B, c, 3), points (B, N, 3) -> (B, N, D) from the k nearest centers (idx (B, N, k) if known)."""
    return interpolate(feats, *interpolation_weights(centers, points, k, idx))


class SegmentationHead(nn.Module):
    """Per-point labels from multi-layer token features.

    Token features = mean of LayerNorm'd hidden states of `layers` (1-based); global feature =
    max + mean; optional object-category embedding (part segmentation). Features are propagated to
    the points by 3-NN inverse-distance interpolation, then a shared MLP (widths `hidden`) gives
    (B, N, K) logits. The MLP's first layer is applied to the c token features before the
    interpolation (the interpolation is linear, so this is the same function) and its global part
    once per cloud: a point costs 3 * hidden[0] multiply-adds there instead of 3D * hidden[0].
    point_geometry: the MLP also reads each point's offset (3) from its nearest token center, the
    local detail that interpolated token features blur (small objects next to large ones).
    local_shape_k: the MLP also reads each point's LocalShape descriptors (models/local_shape.py) from
    its local_shape_k nearest points, at each scale of local_shape_voxels (0: the points themselves;
    v: one point per v-metre voxel): the shape of its own surface (sphere, box side, table top).
    MLP input layout: [interpolated token features (D), global (2D [+ category]), offset (3),
    LocalShape (7 per scale)].
    """

    GEOMETRY_DIM = 3

    def __init__(self, dim: int, num_classes: int, layers: list[int], num_categories: int = 0,
                 dropout: float = 0.5, category_dim: int = 64, hidden: tuple[int, int] | list[int] = (512, 256),
                 point_geometry: bool = False, local_shape_k: int = 0,
                 local_shape_voxels: tuple[float, ...] | list[float] = (0.0,)):
        super().__init__()
        if local_shape_k < 0:
            raise ValueError(f"local_shape_k must be >= 0, got {local_shape_k}")
        self.layers = list(layers)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in self.layers)
        self.category = nn.Embedding(num_categories, category_dim) if num_categories > 0 else None
        self.offset_dim = self.GEOMETRY_DIM if point_geometry else 0
        self.local_shape_k = int(local_shape_k)
        self.local_shape_voxels = tuple(float(v) for v in local_shape_voxels)
        self.local_shape_dim = LOCAL_SHAPE_DIM * len(self.local_shape_voxels) if self.local_shape_k else 0
        self.geometry_dim = self.offset_dim + self.local_shape_dim
        in_dim = dim + 2 * dim + (category_dim if self.category is not None else 0) + self.geometry_dim
        h0, h1 = (int(h) for h in hidden)
        self.mlp = nn.Sequential(
            nn.Conv1d(in_dim, h0, 1), nn.BatchNorm1d(h0), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv1d(h0, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
            nn.Conv1d(h1, num_classes, 1))

    @property
    def point_dim(self) -> int:
        """Width of the per-point (interpolated token) part of the MLP input."""
        return self.norms[0].normalized_shape[0]

    def folded_mlp(self) -> "FoldedPointMLP | None":
        """The MLP as folded GEMMs for inference (see FoldedPointMLP); None if it cannot be folded."""
        return FoldedPointMLP.build(self.mlp, self.point_dim, self.geometry_dim)

    def token_features(self, out: BackboneOutput) -> torch.Tensor:
        hidden = out.encoded.hidden
        if max(self.layers) > len(hidden) or min(self.layers) < 1:
            raise ValueError(f"segmentation layers {self.layers} outside the encoder's 1..{len(hidden)}")
        return torch.stack([n(hidden[i - 1]) for n, i in zip(self.norms, self.layers)]).mean(0)

    def geometry_inputs(self, centers: torch.Tensor, xyz: torch.Tensor, idx: torch.Tensor,
                        point_features: torch.Tensor | None = None) -> torch.Tensor | None:
        """The per-point geometry columns of the MLP input: centers (B, c, 3), xyz (B, N, 3), idx (B, N, k)
        nearest centers first, point_features (B, N, local_shape_dim) LocalShape (computed from xyz if None and used)
        -> (B, N, geometry_dim), or None without geometry."""
        parts = []
        if self.offset_dim:
            parts.append(nearest_offsets(centers, xyz, idx))
        if self.local_shape_k:
            parts.append(local_shape_batch(xyz, self.local_shape_k, self.local_shape_voxels) if point_features is None
                         else point_features.to(xyz.dtype))
        return torch.cat(parts, dim=-1) if parts else None

    def forward(self, out: BackboneOutput, points: torch.Tensor, category: torch.Tensor | None = None,
                nn_idx: torch.Tensor | None = None, point_features: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, N, K) logits; nn_idx (B, N, 3): the 3 nearest token centers of every point, if known;
        point_features (B, N, local_shape_dim): their LocalShape descriptors, if known (local_shape_k > 0)."""
        feats = self.token_features(out)                            # (B, c, D)
        glob = pooled_features(feats)                               # (B, 2D)
        if self.category is not None:
            if category is None:
                raise ValueError("part segmentation head needs the object category")
            glob = torch.cat([glob, self.category(category)], dim=-1)
        xyz, centers = points[..., :3], out.tokens.centers
        folded = None if self.training else self.folded_mlp()
        if folded is not None:
            return self._forward_folded(folded, feats, glob, centers, xyz, nn_idx, point_features)
        # first 1x1 conv on [per_point, glob] applied as W_p p + (W_g g + b), with W_p on the tokens
        # before the (linear) interpolation and the global term once per cloud: same function
        conv0, d, g = self.mlp[0], feats.shape[-1], self.geometry_dim
        w = conv0.weight[:, :, 0]
        # the global term joins the c token rows before the interpolation (its weights sum to 1): no per-point add
        tok_h = nn.functional.linear(feats, w[:, :d]) + \
            nn.functional.linear(glob, w[:, d:w.shape[1] - g], conv0.bias).unsqueeze(1)     # (B, c, H0)
        idx, weights = interpolation_weights(centers, xyz, 3, nn_idx)
        h = interpolate(tok_h, idx, weights)                                                 # (B, N, H0)
        if g:
            h = h + nn.functional.linear(self.geometry_inputs(centers, xyz, idx, point_features), w[:, w.shape[1] - g:])
        return self.mlp[1:](h.transpose(1, 2)).transpose(1, 2)      # (B, N, K)

    def _forward_folded(self, folded: "FoldedPointMLP", feats: torch.Tensor, glob: torch.Tensor, centers: torch.Tensor,
                        xyz: torch.Tensor, nn_idx: torch.Tensor | None,
                        point_features: torch.Tensor | None = None) -> torch.Tensor:
        """Eval mode (and exported graphs): the same function with the BatchNorms folded and the MLP
        on the channel-last layout (no (B, H, N) transposes): (B, c, D), (B, G), (B, c, 3), (B, N, 3)
        -> (B, N, K). The first layer and its global term run on the c token rows."""
        table = folded.project_tokens(feats) + folded.global_bias(glob).unsqueeze(1)        # (B, c, H0)
        idx, weights = interpolation_weights(centers, xyz, 3, nn_idx)
        h = interpolate(table, idx, weights)                                                # (B, N, H0)
        if self.geometry_dim:
            h = h + folded.geometry(self.geometry_inputs(centers, xyz, idx, point_features))
        return folded.apply(h)


class FoldedPointMLP:
    """The segmentation head's per-point MLP (1x1 Conv1d -> eval BatchNorm -> ReLU -> Dropout ...)
    folded into plain GEMMs on the channel-last layout ((m, C) @ W + b), with the first layer split
    into its per-point part and its global part (the global feature is the same for every point, so
    its product is computed once per call). Same function as head.mlp in eval mode, ~1.5-3x faster
    on CPU. Built once from the weights (it does not depend on budgets). ``None`` from :meth:`build`
    when the MLP has another structure (the caller then uses head.mlp)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, bool]], point_dim: int, geometry_dim: int = 0):
        self.layers, self.point_dim, self.geometry_dim = layers, point_dim, geometry_dim

    @classmethod
    @torch.no_grad()
    def build(cls, mlp: nn.Sequential, point_dim: int, geometry_dim: int = 0) -> "FoldedPointMLP | None":
        layers: list[list] = []
        for mod in mlp:
            if isinstance(mod, nn.Conv1d) and mod.kernel_size == (1,) and mod.groups == 1:
                w = mod.weight[:, :, 0].detach().double()
                b = mod.bias.detach().double() if mod.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
                layers.append([w, b, False])
            elif isinstance(mod, nn.BatchNorm1d) and layers and not layers[-1][2] and mod.track_running_stats:
                scale = mod.weight.detach().double() / torch.sqrt(mod.running_var.double() + mod.eps)
                w, b, _ = layers[-1]
                layers[-1][0] = w * scale[:, None]
                layers[-1][1] = (b - mod.running_mean.double()) * scale + mod.bias.detach().double()
            elif isinstance(mod, nn.ReLU) and layers:
                layers[-1][2] = True
            elif isinstance(mod, nn.Dropout):
                continue
            else:
                return None
        if not layers:
            return None
        dtype = mlp[0].weight.dtype
        return cls([(w.t().contiguous().to(dtype), b.to(dtype), relu) for w, b, relu in layers], point_dim,
                   geometry_dim)

    def global_bias(self, glob: torch.Tensor) -> torch.Tensor:
        """glob (G,) or (B, G) -> first-layer bias (H,) or (B, H) including the global feature's contribution."""
        w0, b0, _ = self.layers[0]
        return b0 + glob.to(w0.dtype) @ w0[self.point_dim:w0.shape[0] - self.geometry_dim]

    def geometry(self, geometry: torch.Tensor) -> torch.Tensor:
        """First-layer term of the points' geometry columns (SegmentationHead.geometry_inputs: offset from
        the nearest center, LocalShape): (m, G) -> (m, H0)."""
        w0 = self.layers[0][0]
        return geometry.to(w0.dtype) @ w0[w0.shape[0] - self.geometry_dim:]

    def project_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """The first layer's per-point weights applied to token features: (..., c, D) -> (..., c, H0);
        the interpolation of these to points equals the first layer on interpolated features."""
        w0 = self.layers[0][0]
        return feats.to(w0.dtype) @ w0[:self.point_dim]

    def apply(self, first: torch.Tensor) -> torch.Tensor:
        """Like __call__ with the first layer's bias already in `first`, for any leading shape:
        (..., H0) -> (..., K) (matmul instead of addmm; what exported graphs run)."""
        x = first.relu() if self.layers[0][2] else first
        for w, b, relu in self.layers[1:]:
            x = torch.matmul(x, w) + b
            if relu:
                x = x.relu()
        return x

    def __call__(self, first: torch.Tensor, bias0: torch.Tensor | None = None) -> torch.Tensor:
        """first (m, H0): interpolated project_tokens output; bias0 from global_bias -> logits (m, K).
        bias0 None: `first` already holds it (it was added to the token table before the
        interpolation, whose weights sum to 1: the same function without a per-point add)."""
        x = first if bias0 is None else first + bias0
        relu = self.layers[0][2]
        if relu:
            x = torch.relu_(x)
        for w, b, relu in self.layers[1:]:
            x = torch.addmm(b, x, w)
            if relu:
                x = torch.relu_(x)
        return x


class TaskModel(nn.Module):
    """backbone + head; forward(points (B, N, C), category (B,) | None) -> logits."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.batchnorm_bank: BatchNormBank | None = None     # BatchNorm statistics per operating point

    def forward(self, points: torch.Tensor, category: torch.Tensor | None = None, **compute) -> torch.Tensor:
        """compute: num_centers / budget / fusion_threshold for the backbone (an operating point)."""
        return self.head(self.backbone(points, **compute), points, category)
