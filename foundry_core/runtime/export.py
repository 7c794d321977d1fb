"""ONNX export of a task model (tokenizer network + teacher / Foundry student + gate + head).

What runs outside the graph: non-finite filtering, FPS and kNN grouping (fpsample / pykdtree on
CPU; an FPS loop would unroll into hundreds of nodes) and the 3 nearest token centers of every
point (kd-tree). The graph takes their results:

    groups            (B, c, k, C) float32  group points relative to their centers (+ extra channels)
    centers           (B, c, 3)    float32
    slots             (L,)         int64    arange(L), L = min(token budget, c)   [gated students]
    fusion_threshold  (1,)         float32  merge tokens with pi > r (> 1 disables) [gated students]
    points            (B, M, 3)    float32  points to label                        [segmentation]
    nn_idx            (B, M, 3)    int64    their 3 nearest centers (nearest first) [segmentation]
    point_features    (B, M, 7S)   float32  their LocalShape descriptors, S scales  [heads with local_shape_k]
    category          (B,)         int64    object category                        [partseg w/ category]

and returns

    logits            (B, M, K) segmentation / (B, K) classification
    embeddings        (B, c, D) output tokens (the student's reconstruction of the teacher's tokens)
    segments          (B, c)    int64 SuperToken id of every token (teacher: the token index)
    tokens_in_encoder (B,)      int64 real tokens that entered the encoder

The token budget is the dynamic length of `slots`: the gate's forced merges and the encoder's
sequence length are computed from shapes and tensors only (FoundryStudent.encode_slots), so one
graph (and one TensorRT optimisation profile over L) serves every budget. Axes B, c, L and M are
dynamic; k and C are fixed by the model.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.heads import SegmentationHead, TaskModel
from ..models.local_shape import LOCAL_SHAPE_DIM, local_shape_batch
from ..models.tokenizer import Tokens

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["logits", "embeddings", "segments", "tokens_in_encoder"]
EXPORT_FORMAT_VERSION = 3       # bump when the exported graph changes (the ONNX cache is keyed by it)


@dataclass(frozen=True)
class GraphSignature:
    """Which optional inputs a task model's graph has."""

    gated: bool
    segmentation: bool
    category: bool
    local_shape_k: int = 0          # > 0: the head reads LocalShape descriptors (input point_features)
    local_shape_voxels: tuple[float, ...] = (0.0,)   # ... at these scales (7 columns each)

    @property
    def local_shape_dim(self) -> int:
        return LOCAL_SHAPE_DIM * len(self.local_shape_voxels) if self.local_shape_k else 0

    @property
    def input_names(self) -> list[str]:
        names = ["groups", "centers"]
        if self.gated:
            names += ["slots", "fusion_threshold"]
        if self.segmentation:
            names += ["points", "nn_idx"]
        if self.local_shape_k:
            names += ["point_features"]
        if self.category:
            names += ["category"]
        return names


def signature_of(model: TaskModel) -> GraphSignature:
    backbone = model.backbone
    if not backbone.exportable:
        raise TypeError(f"ONNX export supports teacher backbones and Foundry students, not "
                        f"{type(backbone).__name__} (token-reduction baselines run in PyTorch only)")
    seg = isinstance(model.head, SegmentationHead)
    return GraphSignature(gated=backbone.budget_adjustable, segmentation=seg,
                          category=seg and model.head.category is not None,
                          local_shape_k=model.head.local_shape_k if seg else 0,
                          local_shape_voxels=model.head.local_shape_voxels if seg else (0.0,))


class ExportGraph(nn.Module):
    """The exported function (see the module docstring); also runs eagerly (parity reference)."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.model = model.eval()
        self.sig = signature_of(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.sig.input_names, inputs))
        backbone, head = self.model.backbone, self.model.head
        groups, centers = x["groups"], x["centers"]
        tokens, pos = backbone.tokenizer.embed(groups, centers)
        tok = Tokens(tokens=tokens, pos=pos, centers=centers, center_idx=None, group_idx=None, groups=groups)
        if self.sig.gated:
            out = backbone.encode_slots(tok, x["slots"], x["fusion_threshold"])
        else:
            out = backbone.encode(tok)
        if self.sig.segmentation:
            logits = head(out, x["points"], x.get("category"), x["nn_idx"], x.get("point_features"))
        else:
            logits = head(out, None, x.get("category"))
        return logits, out.last, out.segments, out.tokens_in_encoder


def example_inputs(model: TaskModel, batch: int = 2, num_centers: int | None = None, budget: int | None = None,
                   num_points: int = 300, fusion_threshold: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes and dtypes for the model's graph (export and parity tests)."""
    sig = signature_of(model)
    tokz = model.backbone.tokenizer
    c = int(num_centers or tokz.num_groups)
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(batch, c, 3, generator=g) * 2 - 1
    groups = torch.randn(batch, c, tokz.group_size, tokz.in_channels, generator=g) * 0.05
    inputs: list[torch.Tensor] = [groups, centers]
    if sig.gated:
        length = c if budget is None else min(int(budget), c)
        inputs += [torch.arange(length, dtype=torch.int64), torch.tensor([fusion_threshold], dtype=torch.float32)]
    if sig.segmentation:
        pts = torch.rand(batch, num_points, 3, generator=g) * 2 - 1
        d = torch.cdist(pts, centers)
        inputs += [pts, d.topk(min(3, c), dim=-1, largest=False).indices]
    if sig.local_shape_k:
        inputs += [local_shape_batch(inputs[-2], sig.local_shape_k, sig.local_shape_voxels)]
    if sig.category:
        inputs += [torch.zeros(batch, dtype=torch.int64)]
    return tuple(inputs)


def export_onnx(model: TaskModel, path: str | Path, opset: int = 18) -> Path:
    """Export the task model's graph to `path` (atomic write) and check its symbolic axes."""
    import onnx

    graph = ExportGraph(model).eval()
    sig = graph.sig
    ex = example_inputs(model, batch=2, num_centers=max(8, model.backbone.tokenizer.num_groups),
                        budget=None, num_points=64)
    B, C, L, M = (torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("centers", min=4, max=65536),
                  torch.export.Dim("slots", min=1, max=65536), torch.export.Dim("points", min=1, max=1 << 24))
    axes = {"groups": {0: B, 1: C}, "centers": {0: B, 1: C}, "slots": {0: L}, "fusion_threshold": None,
            "points": {0: B, 1: M}, "nn_idx": {0: B, 1: M}, "point_features": {0: B, 1: M}, "category": {0: B}}
    dynamic = tuple(axes[n] for n in sig.input_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings(), quiet_logger("torch.onnx"), quiet_logger("torch.export"):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(graph, ex, input_names=sig.input_names, output_names=OUTPUT_NAMES,
                                     dynamic_shapes=(dynamic,), opset_version=opset, dynamo=True,
                                     external_data=False, verbose=False)
        prog.save(tmp)
        proto = onnx.load(tmp)
        check_dynamic_axes(proto, sig)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("exported %s (%d nodes, inputs %s)", path, len(proto.graph.node), sig.input_names)
    return path


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR):
    """Raise a logger's level for the duration (the exporter logs every missing optional package)."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def check_dynamic_axes(proto, sig: GraphSignature) -> None:
    """Every axis that must be dynamic is symbolic in the exported graph (an axis frozen at the
    example's size would silently break other batch sizes, clouds or budgets)."""
    want = {"groups": (0, 1), "centers": (0, 1), "slots": (0,), "points": (0, 1), "nn_idx": (0, 1),
            "point_features": (0, 1), "category": (0,)}
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for axis in want.get(inp.name, ()):
            if not dims[axis].dim_param:
                raise RuntimeError(f"ONNX export froze axis {axis} of input {inp.name!r} "
                                   f"at {dims[axis].dim_value}; it must be dynamic")


def default_cache_dir(override: str | Path = "") -> Path:
    """Where exported graphs and TensorRT engines are cached: override, else $FOUNDRY_CACHE_DIR,
    else ~/.cache/foundry."""
    return Path(override or os.environ.get("FOUNDRY_CACHE_DIR") or Path.home() / ".cache" / "foundry")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_numpy(inputs: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
