"""Budget-aware predictor: raw cloud in, per-point labels / confidences / SuperToken segments and
token embeddings out, with the token budget chosen per call (no ROS).

Pipeline of one call (timed stage by stage with time.perf_counter, CUDA synchronised):

    preprocess  drop non-finite rows, crop / range gate, voxel filter, cap, choose c, normalise
    tokenize    backbone.tokenizer with c centers (FPS + kNN; fpsample / pykdtree for large clouds)
    encode      teacher encoder, or the student's encode(tok, budget, fusion_threshold)
    head        segmentation: per-point logits of the USED points (the head's 3-NN inverse-distance
                propagation from the token centers, in chunks of `head_chunk` points, so no
                (M, c) matrix is ever built; the head MLP runs as BatchNorm-folded GEMMs, see
                FoldedPointMLP), softmax -> label + confidence; cls: one label per cloud
    postprocess every input row gets an answer (see below)

Per-point outputs are aligned index by index with the input (organised (H, W, C) clouds are
flattened row-major, so index = row * W + col):

* used points: their own prediction;
* finite points inside the crop box / range gate removed by the voxel filter or the max_points
  cap: label, confidence and segment of their nearest used point (pykdtree, input frame);
* non-finite points: label -1, confidence 0, segment -1;
* finite points outside the crop box / range gate: label -1, confidence 0, segment -1 (the model
  never saw them; -1 means "no prediction", not a class).

cls models give every in-region point the cloud's class (confidence = the class probability).

Segments: the SuperToken id of the token whose kNN group holds the point (the group with the
nearest center when several groups hold it; points in no group take the nearest center's token).
Tokens of a teacher or of a token-reduction baseline are their own segments (ids 0..c-1) resp.
the baseline's slot -> encoder-token map.

Budget. A gated FoundryStudent merges the tokens whose gate probability exceeds the fusion threshold r
(default: the gate's training threshold; r > 1 disables it) and caps the tokens entering the encoder
at the token budget in [min_budget, max_budget] = [s, max_centers] (values outside are clamped) by
forcing further merges; both are used as given on every call
(nothing depending on them is cached). A teacher, an ungated student or a baseline has a fixed
token count: budgets are ignored with a one-time warning.

Memory. max_points (PreprocessConfig) caps the points that reach the model; the tokenizer holds
(c, k, C) groups, the head (head_chunk, 3 * D) features per chunk; the points removed by the cap are
labelled through a kd-tree, so 2^18-point clouds never materialise (N, c) or (N, M) matrices.
A Predictor is not thread-safe (one call at a time).
"""
from __future__ import annotations

import colorsys
import contextlib
import logging
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, from_dict
from ..configs import FinetuneConfig
from ..models.backbone import BackboneOutput, PointBackbone, pooled_features
from ..models.heads import SegmentationHead, TaskModel
from ..models.io import build_backbone, model_config_of
from ..models.sampling import FAST_FPS_MIN_POINTS, FAST_KNN_MIN_POINTS
from ..models.student import FoundryStudent
from ..models.tokenizer import Tokens
from ..train.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from .backends import BACKENDS, BackendChoice, rungs_for, select_backend
from .preprocess import Preprocessed, PreprocessConfig, as_cloud, preprocess
from .types import FrameReport, LabelInfo, PredictorResult

log = logging.getLogger(__name__)


@dataclass
class PredictorConfig:
    model_path: str = ""
    device: str = "auto"                            # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "fp16"] = "fp32"     # fp16 = CUDA autocast; CPU falls back to fp32
    preprocess: PreprocessConfig | None = None      # None: defaults chosen from the model's task
    budget: int | None = None                       # default token budget (gated students)
    fusion_threshold: float | None = None           # default fusion threshold r (gated students)
    group_size: int | None = None                   # override the tokenizer's k
    seed: int = 0                                   # FPS start point and the max_points subset
    head_chunk: int = 16384                         # points per chunk of the segmentation head
    category: int | None = None                     # object category of a partseg model with category embedding
    fold_head: bool = True                          # run the head MLP as folded GEMMs (same function, faster)
    backend: str = "auto"                           # auto | tensorrt | torch | onnxruntime (see runtime/backends.py)
    onnx_path: str = ""                             # exported graph; empty: export to the cache on first use
    cache_dir: str = ""                             # ONNX / engine cache; empty: $FOUNDRY_CACHE_DIR or ~/.cache/foundry
    threads: int = 0                                # onnxruntime intra-op threads (0 = its default)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError("predictor.precision must be 'fp32' or 'fp16'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError("predictor.device must be auto, cpu, cuda or cuda:N")
        if self.head_chunk < 1:
            raise ConfigError("predictor.head_chunk must be >= 1")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError("predictor.group_size must be >= 1")
        if self.budget is not None and self.budget < 1:
            raise ConfigError("predictor.budget must be >= 1")
        if self.backend not in BACKENDS:
            raise ConfigError(f"predictor.backend must be one of {list(BACKENDS)}, got {self.backend!r}")


# ---------------------------------------------------------------------------------------- helpers
def file_hash(path: str | Path, length: int = 12) -> str:
    """sha256 of a file's bytes, first `length` hex characters."""
    from .export import file_sha256
    return file_sha256(path)[:length]


def label_colors(n: int) -> list[tuple[float, float, float, float]]:
    """n deterministic, distinct RGBA colours (golden-ratio hue walk, alternating saturation/value)."""
    out = []
    for i in range(n):
        hue = (i * 0.6180339887498949) % 1.0
        sat = 0.85 if (i // 2) % 2 == 0 else 0.6
        val = 0.95 if (i // 4) % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        out.append((round(r, 4), round(g, 4), round(b, 4), 1.0))
    return out


def default_preprocess(task: str, num_groups: int) -> PreprocessConfig:
    """Object models (cls, partseg) were trained on unit-sphere clouds with a fixed number of centers;
    scene models on metric coordinates with c growing with the cloud."""
    if task in ("cls", "partseg"):
        return PreprocessConfig(normalize="unit_sphere", min_centers=num_groups, max_centers=num_groups)
    return PreprocessConfig()


def backbone_kind(backbone: nn.Module) -> str:
    """gated_student | student | teacher | baseline."""
    if isinstance(backbone, FoundryStudent):
        return "gated_student" if backbone.gate is not None else "student"
    if isinstance(backbone, PointBackbone):
        return "teacher"
    if hasattr(backbone, "encode"):
        return "baseline"
    raise TypeError(f"unsupported backbone {type(backbone).__name__}")


@contextlib.contextmanager
def cpu_libraries_for_large_clouds(tokenizer: nn.Module, points: torch.Tensor):
    """On CUDA, large clouds use the CPU libraries (fpsample, pykdtree) for FPS / kNN: the torch
    paths build (c, N) distance tensors. No change on CPU (the tokenizer's auto mode decides)."""
    if points.device.type == "cpu":
        yield
        return
    n = points.shape[1]
    saved = tokenizer.fps_method, tokenizer.knn_method
    tokenizer.fps_method = "fpsample" if n >= FAST_FPS_MIN_POINTS else "torch"
    tokenizer.knn_method = "kdtree" if n >= FAST_KNN_MIN_POINTS else "torch"
    try:
        yield
    finally:
        tokenizer.fps_method, tokenizer.knn_method = saved


def tokenize(tokenizer: nn.Module, points: torch.Tensor, num_centers: int,
             generator: torch.Generator | None) -> Tokens:
    """backbone.tokenizer with c centers (see cpu_libraries_for_large_clouds)."""
    with cpu_libraries_for_large_clouds(tokenizer, points):
        return tokenizer(points, num_groups=num_centers, generator=generator)


def encode(backbone: nn.Module, tok: Tokens, budget: int | None = None, fusion_threshold: float | None = None,
           points: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Encoder stage on given tokens: teacher -> BackboneOutput; FoundryStudent -> StudentOutput
    (budget / fusion threshold applied); baseline -> its own encode (no budget)."""
    if isinstance(backbone, FoundryStudent):
        return backbone.encode(tok, budget=budget, fusion_threshold=fusion_threshold)
    if isinstance(backbone, PointBackbone):
        return BackboneOutput(tokens=tok, encoded=backbone.encoder(tok.tokens, tok.pos))
    return backbone.encode(tok, points=points, generator=generator)


def nearest_centers(centers: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(M, k) int64 indices of the k nearest centers of every query (pykdtree, nearest first)."""
    from pykdtree.kdtree import KDTree
    k = min(k, centers.shape[0])
    _, idx = KDTree(np.ascontiguousarray(centers, dtype=np.float32)).query(
        np.ascontiguousarray(queries, dtype=np.float32), k=k)
    return idx.reshape(queries.shape[0], k).astype(np.int64)


def propagate_features(feats: torch.Tensor, centers: torch.Tensor, xyz: torch.Tensor, nn_idx: torch.Tensor
                       ) -> torch.Tensor:
    """The head's inverse-distance interpolation for one chunk of one cloud:
    feats (c, D), centers (c, 3), xyz (m, 3), nn_idx (m, k) nearest centers -> (m, D)."""
    nb = centers[nn_idx]                                            # (m, k, 3)
    dist = ((xyz.unsqueeze(1) - nb) ** 2).sum(-1).clamp_min(1e-10)
    w = 1.0 / dist
    w = w / w.sum(-1, keepdim=True)
    return (feats[nn_idx] * w.unsqueeze(-1).to(feats.dtype)).sum(1)


class FoldedPointMLP:
    """The segmentation head's per-point MLP (1x1 Conv1d -> eval BatchNorm -> ReLU -> Dropout ...)
    folded into plain GEMMs on the channel-last layout ((m, C) @ W + b), with the first layer split
    into its per-point part and its global part (the global feature is the same for every point, so
    its product is computed once per call). Same function as head.mlp in eval mode, ~1.5-3x faster
    on CPU. Built once from the weights (it does not depend on budgets). ``None`` from :meth:`build`
    when the MLP has another structure (the caller then uses head.mlp)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, bool]], point_dim: int):
        self.layers, self.point_dim = layers, point_dim

    @classmethod
    @torch.no_grad()
    def build(cls, mlp: nn.Sequential, point_dim: int) -> "FoldedPointMLP | None":
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
        return cls([(w.t().contiguous().to(dtype), b.to(dtype), relu) for w, b, relu in layers], point_dim)

    def global_bias(self, glob: torch.Tensor) -> torch.Tensor:
        """glob (G,) -> first-layer bias (H,) including the global feature's contribution."""
        w0, b0, _ = self.layers[0]
        return b0 + glob.to(w0.dtype) @ w0[self.point_dim:]

    def __call__(self, per_point: torch.Tensor, bias0: torch.Tensor) -> torch.Tensor:
        w0, _, relu = self.layers[0]
        x = torch.addmm(bias0, per_point.to(w0.dtype), w0[:self.point_dim])
        if relu:
            x = torch.relu_(x)
        for w, b, relu in self.layers[1:]:
            x = torch.addmm(b, x, w)
            if relu:
                x = torch.relu_(x)
        return x


def point_tokens(group_idx: np.ndarray, xyz: np.ndarray, centers: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Token of every used point: the group holding it with the nearest center, else `nearest` (M,)."""
    c, k = group_idx.shape
    members = group_idx.reshape(-1)
    token = np.repeat(np.arange(c), k)
    d = ((xyz[members].astype(np.float64) - centers[token].astype(np.float64)) ** 2).sum(1)
    order = np.lexsort((token, d, members))
    m_sorted = members[order]
    first = np.ones(m_sorted.size, dtype=bool)
    first[1:] = m_sorted[1:] != m_sorted[:-1]
    out = np.asarray(nearest, dtype=np.int64).copy()
    out[m_sorted[first]] = token[order][first]
    return out


# ---------------------------------------------------------------------------------------- predictor
class Predictor:
    """See the module docstring. Build with :meth:`from_checkpoint`."""

    def __init__(self, model: TaskModel, meta: dict, cfg: PredictorConfig, model_hash: str = ""):
        self.cfg = cfg
        self.meta = meta
        self.task = meta.get("task", "cls")
        self.classes = list(meta.get("classes") or [])
        self.seg_classes = list(meta.get("seg_classes") or []) or None
        self.model_hash = model_hash
        self.device = self._resolve_device(cfg.device)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            log.warning("precision fp16 requested on %s: fp16 is only used on CUDA "
                        "(CPU half precision is several times slower); running fp32", self.device)
            self.precision = "fp32"
        else:
            self.precision = cfg.precision
        self.model = model.to(self.device).eval()
        self.backbone, self.head = model.backbone, model.head
        self.kind = backbone_kind(self.backbone)
        self.folded_mlp = (FoldedPointMLP.build(self.head.mlp, self.head.norms[0].normalized_shape[0])
                           if isinstance(self.head, SegmentationHead) and cfg.fold_head else None)
        if cfg.group_size is not None:
            self.backbone.tokenizer.group_size = int(cfg.group_size)
        self.in_channels = int(self.backbone.tokenizer.in_channels)
        mcfg = getattr(self.backbone, "cfg", None)
        num_groups = getattr(mcfg, "num_groups", self.backbone.tokenizer.num_groups)
        if cfg.preprocess is not None:
            self.pre_cfg = cfg.preprocess
        elif meta.get("preprocess"):                 # the preprocessing the model was shipped with
            self.pre_cfg = from_dict(PreprocessConfig, meta["preprocess"], "model preprocess")
        else:
            self.pre_cfg = default_preprocess(self.task, num_groups)
        self._budget_warned = False
        self.backend_choice = self._select_backend()
        self.backend, self.runner = self.backend_choice.name, self.backend_choice.runner
        if self.runner is not None:
            from .export import signature_of
            self.graph_signature = signature_of(self.model)
        if self.backend == "onnxruntime-cpu":
            self.backend = getattr(self, "_ort_name", self.backend)
            self.precision = "fp32"
        if self.backend.startswith("torch") and self.device.type != self.backend.split("-")[1]:
            self.device = torch.device(self.backend.split("-")[1])
            self.model.to(self.device)

    # ------------------------------------------------------------------ backends
    def _select_backend(self) -> BackendChoice:
        cuda = self.device.type == "cuda"
        rungs = rungs_for(self.cfg.backend, cuda)
        return select_backend(rungs, {"tensorrt": self._load_tensorrt, "torch-cuda": self._load_torch_cuda,
                                      "onnxruntime-cpu": self._load_onnxruntime, "torch-cpu": lambda: None},
                              requested=self.cfg.backend)

    def _load_torch_cuda(self):
        if self.device.type != "cuda":
            raise RuntimeError("no CUDA device" if not torch.cuda.is_available() else "device set to cpu")
        return None

    def _graph_supported(self) -> None:
        if self.kind == "baseline":
            raise RuntimeError("token-reduction baselines are not exported (PyTorch only)")

    def cache_dir(self) -> Path:
        from .export import default_cache_dir
        return default_cache_dir(self.cfg.cache_dir)

    def onnx_path(self) -> Path:
        """The exported graph: cfg.onnx_path, or the cache's export of this model (made on first use)."""
        from .export import EXPORT_FORMAT_VERSION, export_onnx
        if self.cfg.onnx_path:
            if not Path(self.cfg.onnx_path).is_file():
                raise RuntimeError(f"onnx_path {self.cfg.onnx_path} does not exist")
            return Path(self.cfg.onnx_path)
        digest = self.model_hash or file_hash(self.cfg.model_path)
        path = self.cache_dir() / "onnx" / f"{digest}-g{EXPORT_FORMAT_VERSION}-torch{torch.__version__}.onnx"
        if not path.is_file():
            log.info("exporting the model to ONNX (once per model): %s", path)
            export_onnx(self.model.cpu(), path)
            self.model.to(self.device)
        return path

    def _load_onnxruntime(self):
        """ONNX Runtime on CPU; with a CUDA device and an onnxruntime build that has it, its CUDA
        provider (TensorRT provider first when present) with the CPU provider as fallback for ops."""
        import onnxruntime as ort
        from .onnx_runner import OnnxRunner
        self._graph_supported()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
            providers = gpu + providers
        runner = OnnxRunner(self.onnx_path(), providers, threads=self.cfg.threads)
        if runner.providers[0] != "CPUExecutionProvider":
            self._ort_name = "onnxruntime-" + runner.providers[0].replace("ExecutionProvider", "").lower()
        return runner

    def _load_tensorrt(self):
        from .export import OUTPUT_NAMES
        from .tensorrt_engine import TensorRTRunner, engine_for_model, tensorrt_module
        if self.device.type != "cuda":
            raise RuntimeError("no CUDA device" if not torch.cuda.is_available() else "device set to cpu")
        tensorrt_module()
        self._graph_supported()
        data, names = engine_for_model(self.model, self.onnx_path(), self.cache_dir(), self.precision,
                                       self.pre_cfg.min_centers, self.pre_cfg.max_centers, self.pre_cfg.max_points)
        return TensorRTRunner(data, names, OUTPUT_NAMES)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, config: PredictorConfig | None = None,
                        **overrides) -> "Predictor":
        """Rebuild an exported task model (model.safetensors of a fine-tuning run, kind "task_model").

        overrides: fields of PredictorConfig (preprocess may be a PreprocessConfig or a dict)."""
        cfg = config if config is not None else PredictorConfig()
        names = {f.name for f in fields(PredictorConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown predictor option(s) {unknown}; valid: {sorted(names)}")
        if isinstance(overrides.get("preprocess"), dict):
            overrides["preprocess"] = from_dict(PreprocessConfig, overrides["preprocess"], "preprocess")
        if path is not None:
            overrides["model_path"] = str(path)
        cfg = replace(cfg, **overrides)
        if not cfg.model_path:
            raise ConfigError("predictor needs a model path (model.safetensors of a fine-tuning run)")
        model, meta = load_task_model(cfg.model_path)
        return cls(model, meta, cfg, model_hash=file_hash(cfg.model_path))

    @staticmethod
    def _resolve_device(device: str) -> torch.device:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
        return torch.device(device)

    # ------------------------------------------------------------------ description
    def label_info(self) -> list[LabelInfo]:
        names = self.seg_classes if (self.task != "cls" and self.seg_classes) else self.classes
        return [LabelInfo(id=i, name=str(n), color=c) for i, (n, c) in enumerate(zip(names, label_colors(len(names))))]

    @property
    def num_supertokens(self) -> int | None:
        return getattr(self.backbone, "num_supertokens", None) if self.kind.endswith("student") else None

    @property
    def budget_adjustable(self) -> bool:
        return self.kind == "gated_student"

    @property
    def min_budget(self) -> int:
        if self.kind in ("gated_student", "student"):
            return int(self.num_supertokens)
        return int(self.pre_cfg.max_centers)

    @property
    def max_budget(self) -> int:
        if self.kind == "gated_student":
            return max(int(self.pre_cfg.max_centers), int(self.num_supertokens))
        return self.min_budget

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.dim)

    def _resolve_budget(self, budget: int | None, fusion_threshold: float | None, c: int
                        ) -> tuple[int | None, float | None, int, float]:
        """-> (budget passed to the student, threshold passed, reported token_budget, reported fusion_ratio)."""
        b = self.cfg.budget if budget is None else budget
        r = self.cfg.fusion_threshold if fusion_threshold is None else fusion_threshold
        if self.kind != "gated_student":
            if (b is not None or r is not None) and not self._budget_warned:
                log.warning("model backbone is a %s with a fixed token count: token budget / fusion threshold "
                            "are ignored", self.kind)
                self._budget_warned = True
            fixed = int(self.num_supertokens) if self.kind == "student" else c
            return None, None, fixed, math.nan
        if b is not None:
            b = int(min(max(int(b), self.min_budget), self.max_budget))
        # the gate's learned policy (merge pi > r, r = its training threshold unless given) always
        # applies; the budget caps what is left (forced merges of the highest-pi tokens). r > 1
        # disables the threshold (budget only).
        r = float(self.backbone.gate.threshold) if r is None else float(r)
        token_budget = c if b is None else min(b, c)
        return b, r, token_budget, r

    # ------------------------------------------------------------------ inference
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.precision == "fp16" and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def warm_up(self, num_points: int = 20000) -> float:
        """One call on a synthetic cloud (lazy kernel / allocator set-up, so the first real frame is
        not an outlier); returns its milliseconds."""
        rng = np.random.default_rng(0)
        n = int(min(num_points, self.pre_cfg.max_points))
        cloud = rng.uniform(-1.0, 1.0, size=(n, self.in_channels)).astype(np.float32)
        cloud[:, :3] *= np.array([8.0, 8.0, 1.0], np.float32) if self.task == "sceneseg" else 1.0
        kw = {"category": 0} if getattr(self.head, "category", None) is not None else {}
        t0 = time.perf_counter()
        self(cloud, budget=self.max_budget if self.budget_adjustable else None, **kw)
        return (time.perf_counter() - t0) * 1e3

    def __call__(self, points: np.ndarray, budget: int | None = None, fusion_threshold: float | None = None,
                 category: int | None = None) -> PredictorResult:
        t0 = time.perf_counter()
        cloud = as_cloud(points)
        if cloud.shape[1] < self.in_channels:
            raise ValueError(f"the model needs {self.in_channels} channels per point (xyz + "
                             f"{self.in_channels - 3} extra), the cloud has {cloud.shape[1]}")
        cloud = cloud[:, :self.in_channels]          # extra channels the model does not use are ignored
        n = cloud.shape[0]
        pre = preprocess(cloud, self.pre_cfg, seed=self.cfg.seed)
        t1 = time.perf_counter()
        c = pre.num_centers
        b, r, token_budget, ratio = self._resolve_budget(budget, fusion_threshold, c)
        if pre.num_points == 0:
            return self._empty(n, pre, token_budget, ratio, {"preprocess": (t1 - t0) * 1e3}, t0)
        category = self.cfg.category if category is None else category
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        with torch.inference_mode(), self._autocast():
            pts = torch.from_numpy(pre.points).to(self.device).unsqueeze(0)
            run = self._run_torch if self.runner is None else self._run_graph
            net, (t2, t3) = run(pts, pre, c, gen, b, r, category)
            lab_used, conf_used, centers_np, token_segments, embeddings, tie, group_idx, nearest = net
            t4 = time.perf_counter()
        seg_used = token_segments[point_tokens(group_idx, pre.xyz, centers_np, nearest)]
        labels, confidence, segments = self._scatter(n, cloud, pre, lab_used, conf_used, seg_used)
        t5 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "tokenize": (t2 - t1) * 1e3, "encode": (t3 - t2) * 1e3,
                   "head": (t4 - t3) * 1e3, "postprocess": (t5 - t4) * 1e3, "total": (t5 - t0) * 1e3}
        report = FrameReport(points_in=n, points_used=pre.num_points, points_dropped=int(n - pre.in_region.sum()),
                             tokens_in_encoder=int(tie), token_budget=int(token_budget), fusion_ratio=ratio,
                             num_centers=c, backend=self.backend, precision=self.precision,
                             model_hash=self.model_hash, timings_ms=timings)
        return PredictorResult(labels=labels, confidence=confidence, segments=segments,
                               centers=pre.to_input_frame(centers_np), embeddings=embeddings.astype(np.float32),
                               token_segments=token_segments, report=report)

    def _run_torch(self, pts: torch.Tensor, pre: Preprocessed, c: int, gen: torch.Generator, b: int | None,
                   r: float | None, category: int | None):
        """PyTorch eager: tokenizer, encoder (budget applied), chunked head. -> (outputs, (t_tok, t_enc))."""
        m = pre.num_points
        tok = tokenize(self.backbone.tokenizer, pts, c, gen)
        self._sync()
        t2 = time.perf_counter()
        out = encode(self.backbone, tok, budget=b, fusion_threshold=r, points=pts, generator=gen)
        self._sync()
        t3 = time.perf_counter()
        centers_np = tok.centers[0].float().cpu().numpy()
        if isinstance(self.head, SegmentationHead):
            nn_idx = nearest_centers(centers_np, pre.xyz, 3)
            lab_used, conf_used = self._segment(out, tok, pts, nn_idx, category)
            nearest = nn_idx[:, 0]
        else:
            cat = None if category is None else torch.tensor([int(category)], device=self.device)
            logits = self.head(out, pts, cat).float()
            prob = torch.softmax(logits[0], -1)
            conf, lab = prob.max(-1)
            lab_used = np.full(m, int(lab), dtype=np.int32)
            conf_used = np.full(m, float(conf), dtype=np.float32)
            nearest = nearest_centers(centers_np, pre.xyz, 1)[:, 0]
        self._sync()
        segs = getattr(out, "segments", None)
        token_segments = np.arange(c, dtype=np.int32) if segs is None else segs[0].cpu().numpy().astype(np.int32)
        embeddings = out.last[0].float().cpu().numpy()
        tie = out.tokens_in_encoder.max().item() if hasattr(out, "tokens_in_encoder") else c
        group_idx = tok.group_idx[0].cpu().numpy()
        return (lab_used, conf_used, centers_np, token_segments, embeddings, tie, group_idx, nearest), (t2, t3)

    def _run_graph(self, pts: torch.Tensor, pre: Preprocessed, c: int, gen: torch.Generator, b: int | None,
                   r: float | None, category: int | None):
        """Exported graph (onnxruntime / TensorRT): grouping and nearest centers here, the networks
        in the graph ("encode" then covers encoder and head network; "head" the label decoding)."""
        sig = self.graph_signature
        tokz = self.backbone.tokenizer
        with cpu_libraries_for_large_clouds(tokz, pts):
            centers, _, gidx = tokz.group(pts, c, gen)
        groups = tokz.relative_groups(pts, centers, gidx)
        centers_np = centers[0].float().cpu().numpy()
        nn_idx = nearest_centers(centers_np, pre.xyz, 3)
        if nn_idx.shape[1] < 3:                                       # fewer than 3 centers: repeat the last
            nn_idx = np.concatenate([nn_idx, np.repeat(nn_idx[:, -1:], 3 - nn_idx.shape[1], 1)], 1)
        feeds = {"groups": groups.float().cpu().numpy(), "centers": centers_np[None]}
        if sig.gated:
            length = c if b is None else min(b, c)
            feeds["slots"] = np.arange(length, dtype=np.int64)
            feeds["fusion_threshold"] = np.array([r], dtype=np.float32)   # always set for gated students
        if sig.segmentation:
            feeds["points"] = np.ascontiguousarray(pre.xyz[None], dtype=np.float32)
            feeds["nn_idx"] = nn_idx[None]
        if sig.category:
            if category is None:
                raise ValueError("this part segmentation model needs the object category: "
                                 "pass category= (index into the model's classes)")
            feeds["category"] = np.array([int(category)], dtype=np.int64)
        t2 = time.perf_counter()
        out = self.runner(feeds)
        t3 = time.perf_counter()
        logits = out["logits"][0].astype(np.float32)
        logits = logits - logits.max(-1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(-1, keepdims=True)
        m = pre.num_points
        if sig.segmentation:
            lab_used, conf_used = prob.argmax(-1).astype(np.int32), prob.max(-1).astype(np.float32)
        else:
            lab_used = np.full(m, int(prob.argmax()), dtype=np.int32)
            conf_used = np.full(m, float(prob.max()), dtype=np.float32)
        token_segments = out["segments"][0].astype(np.int32)
        tie = int(out["tokens_in_encoder"].max())
        return ((lab_used, conf_used, centers_np, token_segments, out["embeddings"][0].astype(np.float32), tie,
                 gidx[0].cpu().numpy(), nn_idx[:, 0]), (t2, t3))

    def _segment(self, out, tok: Tokens, pts: torch.Tensor, nn_idx: np.ndarray, category: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Chunked segmentation head on the used points -> (labels (M,) int32, confidence (M,) float32)."""
        head: SegmentationHead = self.head
        feats = head.token_features(out)                            # (1, c, D)
        glob = pooled_features(feats)                               # (1, 2D)
        if head.category is not None:
            if category is None:
                raise ValueError("this part segmentation model needs the object category: "
                                 "pass category= (index into the model's classes)")
            glob = torch.cat([glob, head.category(torch.tensor([int(category)], device=self.device))], dim=-1)
        feats, glob, centers = feats[0], glob[0], tok.centers[0]
        xyz = pts[0, :, :3]
        idx = torch.from_numpy(nn_idx).to(self.device)
        m, step = xyz.shape[0], int(self.cfg.head_chunk)
        labels = np.empty(m, dtype=np.int32)
        conf = np.empty(m, dtype=np.float32)
        bias0 = self.folded_mlp.global_bias(glob) if self.folded_mlp is not None else None
        for s in range(0, m, step):
            e = min(s + step, m)
            per_point = propagate_features(feats, centers, xyz[s:e], idx[s:e])      # (m, D)
            if self.folded_mlp is not None:
                logits = self.folded_mlp(per_point, bias0).float()
            else:
                x = torch.cat([per_point, glob.unsqueeze(0).expand(e - s, -1)], dim=-1)
                logits = head.mlp(x.t().unsqueeze(0)).squeeze(0).t().float()
            p, lab = torch.softmax(logits, -1).max(-1)
            labels[s:e] = lab.cpu().numpy()
            conf[s:e] = p.cpu().numpy()
        return labels, conf

    @staticmethod
    def _scatter(n: int, cloud: np.ndarray, pre: Preprocessed, lab_used: np.ndarray, conf_used: np.ndarray,
                 seg_used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-point outputs for all N input rows (see the module docstring)."""
        labels = np.full(n, -1, dtype=np.int32)
        confidence = np.zeros(n, dtype=np.float32)
        segments = np.full(n, -1, dtype=np.int32)
        used = pre.source_index
        labels[used], confidence[used], segments[used] = lab_used, conf_used, seg_used
        removed = pre.in_region.copy()
        removed[used] = False
        ridx = np.flatnonzero(removed)
        if ridx.size:
            from pykdtree.kdtree import KDTree
            tree = KDTree(np.ascontiguousarray(cloud[used, :3], dtype=np.float32))
            _, nn_used = tree.query(np.ascontiguousarray(cloud[ridx, :3], dtype=np.float32), k=1)
            nn_used = nn_used.reshape(-1).astype(np.int64)
            labels[ridx], confidence[ridx], segments[ridx] = lab_used[nn_used], conf_used[nn_used], seg_used[nn_used]
        return labels, confidence, segments

    def _empty(self, n: int, pre: Preprocessed, token_budget: int, ratio: float, timings: dict, t0: float
               ) -> PredictorResult:
        timings = {**timings, "tokenize": 0.0, "encode": 0.0, "head": 0.0, "postprocess": 0.0}
        timings["total"] = (time.perf_counter() - t0) * 1e3
        report = FrameReport(points_in=n, points_used=0, points_dropped=int(n - pre.in_region.sum()),
                             tokens_in_encoder=0, token_budget=int(token_budget), fusion_ratio=ratio, num_centers=0,
                             backend=self.backend, precision=self.precision, model_hash=self.model_hash,
                             timings_ms=timings)
        return PredictorResult(labels=np.full(n, -1, dtype=np.int32), confidence=np.zeros(n, dtype=np.float32),
                               segments=np.full(n, -1, dtype=np.int32), centers=np.zeros((0, 3), np.float32),
                               embeddings=np.zeros((0, self.embedding_dim), np.float32),
                               token_segments=np.zeros(0, np.int32), report=report)


def load_task_model(path: str | Path) -> tuple[TaskModel, dict]:
    """(TaskModel in eval mode, metadata) of an exported task model; mirrors run_evaluate without a dataset."""
    from ..stages.finetune import build_task_model
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "task_model":
        raise CheckpointError(f"{path} is not an exported task model (kind {meta.get('kind')!r}); "
                              "the predictor needs the model.safetensors of a fine-tuning run")
    task = meta.get("task")
    if task not in ("cls", "partseg", "sceneseg"):
        raise CheckpointError(f"{path}: unknown task {task!r}")
    classes = list(meta.get("classes") or [])
    seg_classes = meta.get("seg_classes")
    if task != "cls" and not seg_classes:
        raise CheckpointError(f"{path}: a {task} model without seg_classes in its metadata")
    cfg = from_dict(FinetuneConfig, {"task": task, **meta.get("head", {})})
    cfg.model = model_config_of(meta, path)
    shapes = SimpleNamespace(name=str(path), classes=classes, num_classes=len(classes), seg_classes=seg_classes)
    model = build_task_model(cfg, build_backbone(meta, path), shapes)
    load_state_strict(model, tensors, f"task model {path}")
    return model.eval(), meta
