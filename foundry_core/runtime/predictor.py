"""Budget-aware predictor: raw cloud in, per-point labels / confidences / SuperToken segments and
token embeddings out, with the token budget chosen per call (no ROS).

Pipeline of one call (timed stage by stage with time.perf_counter, CUDA synchronised):

    preprocess  drop non-finite rows, crop / range gate, voxel filter, cap, choose c, normalise
                (preprocess.py)
    tokenize    backbone.tokenizer with c centers (FPS + kNN; fpsample / pykdtree for large clouds)
    encode      backbone.encode(tok, budget, fusion_threshold) (the Backbone interface)
    head        per-point logits of the used points (runners.py: PyTorch eager with the chunked,
                folded segmentation head, or an exported graph on onnxruntime / TensorRT)
    postprocess every input row gets an answer (postprocess.py)

The two CPU jobs that need only the preprocessed cloud (LocalShape descriptors of the used points,
the nearest used point of every removed row) run on a worker thread beside tokenize / encode
(frame_geometry.py, ``overlap_geometry``); the stage that first reads one waits for it.

Per-point outputs are aligned index by index with the input (organised (H, W, C) clouds are
flattened row-major, so index = row * W + col); cls models give every in-region point the cloud's
class (confidence = the class probability). Tokens of a teacher or of a token-reduction baseline
are their own segments (ids 0..c-1) resp. the baseline's slot -> encoder-token map.

Budget. A gated FoundryStudent merges the tokens whose gate probability exceeds the fusion threshold r
(default: the gate's training threshold; r > 1 disables it) and caps the tokens entering the encoder
at the token budget in [min_budget, max_budget] = backbone.budget_range(max_centers) = [s, max_centers]
(values outside are clamped) by forcing further merges; both are used as given on every call
(nothing depending on them is cached). A teacher, an ungated student or a baseline has a fixed
token count: budgets are ignored with a one-time warning.

Operating points (operating_points.py). ``Predictor.operating_points`` is the model's ordered compute
range, cheapest first (its metadata's list, or a default set derived from the PreprocessConfig);
``operating_point=`` (a name or an OperatingPoint) overrides, for that call only, max_points and
max_centers (min_centers capped at it) and the budget / fusion threshold (explicit budget= /
fusion_threshold= still win). ``calibrate`` measures each point's median latency.

Abandon. ``abandon=`` (a callable) is asked between stages (after preprocessing, after the network);
when it returns True the call stops, cancels the frame's geometry jobs not started yet and raises
FrameAbandoned (the node abandons a frame past its deadline when a newer one is waiting).

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
from typing import Callable, Literal

import numpy as np
import torch

from ..configs import OperatingPoint
from ..models.heads import TaskModel
from ..models.io import load_task_model
from ..typed_yaml import ConfigError, from_dict
from ..models.batchnorm_bank import BatchNormBank
from .backends import (BACKENDS, BackendChoice, load_onnxruntime, load_tensorrt, load_torch_cuda,
                       onnxruntime_backend_name, rungs_for, select_backend)
from .operating_points import (call_preprocess, fit_to_backbone, operating_points_of, point_cost_ms, sweep_extent,
                               synthetic_sweep)
from .frame_geometry import GeometryWorker
from .postprocess import postprocess
from .preprocess import Preprocessed, PreprocessConfig, as_cloud, preprocess
from .runners import GraphRunner, TorchRunner
from .types import (CalibrationStopped, FrameAbandoned, FrameReport, LabelInfo, NetworkOutput,
                    NonFiniteOutputError, PredictorResult)

log = logging.getLogger(__name__)
SHARED = ""          # the BatchNorm statistics shared by every operating point (the model's own)
CALIBRATION_SWEEP_FACTOR = 4   # calibrate()'s synthetic sweep: this many times the top point's points,
CALIBRATION_SWEEP_MAX = 65536  # at most this many (never fewer than the top point's)


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
    embeddings: bool = True                         # torch backends: False returns no token embeddings (0 rows),
                                                    # so a student's CAU never runs for a segmentation head
    overlap_geometry: Literal["auto", "always", "never"] = "auto"
                                                    # LocalShape and the fill of removed rows on a worker thread
                                                    # beside the network (frame_geometry.py), the network on one
                                                    # core less; auto: per operating point, whichever calibrate()
                                                    # measured faster (beside, until calibrated); never: in line

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
        if self.overlap_geometry not in ("auto", "always", "never"):
            raise ConfigError("predictor.overlap_geometry must be 'auto', 'always' or 'never', "
                              f"got {self.overlap_geometry!r}")


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
    scene models on metric coordinates with c growing with the cloud, within 50 m, thinned by range
    (far points thinned, not dropped)."""
    if task in ("cls", "partseg"):
        return PreprocessConfig(normalize="unit_sphere", min_centers=num_groups, max_centers=num_groups)
    return PreprocessConfig(thinning="range", max_range=50.0)


def check_finite(net: NetworkOutput) -> None:
    """NonFiniteOutputError when the network's confidences or embeddings hold NaN / Inf."""
    bad = [name for name, a in (("logits", net.confidence), ("embeddings", net.embeddings)) if not np.isfinite(a).all()]
    if bad:
        raise NonFiniteOutputError(f"the model produced non-finite {' and '.join(bad)} for this frame "
                                   "(damaged weights or an input far outside the training range); outputs dropped")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(device)


# ---------------------------------------------------------------------------------------- predictor
class Predictor:
    """See the module docstring. Build with :meth:`from_checkpoint`."""

    def __init__(self, model: TaskModel, meta: dict, cfg: PredictorConfig, model_hash: str = ""):
        self.cfg, self.meta, self.model_hash = cfg, meta, model_hash
        self.task = meta.get("task", "cls")
        self.classes = list(meta.get("classes") or [])
        self.seg_classes = list(meta.get("seg_classes") or []) or None
        self.device = resolve_device(cfg.device)
        self.precision = cfg.precision
        if cfg.precision == "fp16" and self.device.type != "cuda":
            log.warning("precision fp16 requested on %s: fp16 is only used on CUDA "
                        "(CPU half precision is several times slower); running fp32", self.device)
            self.precision = "fp32"
        self.model = model.to(self.device).eval()
        self.backbone, self.head = model.backbone, model.head
        self.kind = self.backbone.backbone_kind
        if cfg.group_size is not None:
            self.backbone.tokenizer.group_size = int(cfg.group_size)
        self.in_channels = int(self.backbone.tokenizer.in_channels)
        self.pre_cfg = self._preprocess_config(cfg, meta)
        self.operating_points: list[OperatingPoint] = operating_points_of(meta, self.pre_cfg, self.backbone)
        self._budget_warned = False
        self.batchnorm_bank: BatchNormBank | None = getattr(model, "batchnorm_bank", None)
        self._shared_batchnorm = BatchNormBank()
        self._shared_batchnorm.record(SHARED, self.model)
        self._statistics = SHARED                       # whose BatchNorm statistics the runner uses now
        self._onnx_bank_warned = False                  # onnx_path + a BatchNormBank: warned once
        self.torch_runner = TorchRunner(self.model, self.device, cfg.head_chunk, cfg.fold_head, cfg.embeddings)
        self.geometry_worker = GeometryWorker()
        self.overlap_by_point: dict[str, bool] = {}     # calibrate()'s choice per operating point (auto)
        self._folded_mlps = {SHARED: self.torch_runner.folded_mlp}
        self.backend_choice = self._select_backend()
        self.backend, graph = self.backend_choice.name, self.backend_choice.runner
        self.runner = self.torch_runner
        if graph is not None:
            self.runner = self._graph_runner(graph)
        self._graph_runners = {SHARED: self.runner}
        if self.backend == "onnxruntime-cpu":
            self.backend, self.precision = onnxruntime_backend_name(graph), "fp32"
        if self.backend.startswith("torch") and self.device.type != self.backend.split("-")[1]:
            self.device = self.torch_runner.device = torch.device(self.backend.split("-")[1])
            self.model.to(self.device)

    def _preprocess_config(self, cfg: PredictorConfig, meta: dict) -> PreprocessConfig:
        """cfg.preprocess, else the preprocessing the model was shipped with, else the task's default."""
        if cfg.preprocess is not None:
            return cfg.preprocess
        if meta.get("preprocess"):
            return from_dict(PreprocessConfig, meta["preprocess"], "model preprocess")
        mcfg = getattr(self.backbone, "cfg", None)
        return default_preprocess(self.task, getattr(mcfg, "num_groups", self.backbone.tokenizer.num_groups))

    @property
    def folded_mlp(self):
        """The head MLP folded into GEMMs (None: unfolded or not a segmentation head)."""
        return self.torch_runner.folded_mlp

    @folded_mlp.setter
    def folded_mlp(self, value) -> None:
        self.torch_runner.folded_mlp = value

    # ------------------------------------------------------------------ backends
    def shape_range(self) -> tuple[int, int, int]:
        """(min_centers, max_centers, max_points) over the PreprocessConfig and every operating point."""
        p, ops = self.pre_cfg, self.operating_points
        return (min([p.min_centers] + [min(p.min_centers, op.centers) for op in ops]),
                max([p.max_centers] + [op.centers for op in ops]), max([p.max_points] + [op.points for op in ops]))

    def _graph_loaders(self, statistics: str = SHARED) -> dict:
        """rung -> loader of the exported graph with `statistics`' BatchNorm statistics baked in."""
        lo_c, hi_c, hi_m = self.shape_range()
        onnx = lambda: self.onnx_path(statistics)                              # noqa: E731
        return {"tensorrt": lambda: load_tensorrt(self.model, onnx, self.cache_dir(),
                                                  self.precision, self.device, lo_c, hi_c, hi_m),
                "onnxruntime-cpu": lambda: load_onnxruntime(onnx, self.device, self.cfg.threads)}

    def _select_backend(self) -> BackendChoice:
        loaders = {**self._graph_loaders(), "torch-cuda": lambda: load_torch_cuda(self.device),
                   "torch-cpu": lambda: None}
        return select_backend(rungs_for(self.cfg.backend, self.device.type == "cuda"), loaders,
                              requested=self.cfg.backend)

    def _graph_runner(self, graph) -> GraphRunner:
        from .export import signature_of
        return GraphRunner(self.backbone.tokenizer, graph, signature_of(self.model))

    def _use_statistics_of(self, op: OperatingPoint | None) -> None:
        """Run with the operating point's own BatchNorm statistics when the model's BatchNormBank has
        them, else with the shared ones: copied into the modules (and the head re-folded, once per
        point) for PyTorch; exported graphs carry them, one graph per point (made on first use)."""
        bank = self.batchnorm_bank
        if bank is None:
            return
        name = op.name if op is not None and op.name in bank else SHARED
        if name != SHARED and self.cfg.onnx_path and self.runner is not self.torch_runner:
            if not self._onnx_bank_warned:   # a user's graph is one graph: it carries one set of statistics
                log.warning("onnx_path %s is one exported graph: operating points run with its (shared) "
                            "BatchNorm statistics, not the model's per-point BatchNormBank (leave onnx_path "
                            "empty to export one graph per point)", self.cfg.onnx_path)
                self._onnx_bank_warned = True
            name = SHARED
        if name == self._statistics:
            return
        if self.runner is self.torch_runner:
            self._apply_statistics(name)
            if name not in self._folded_mlps:
                self._folded_mlps[name] = self.head.folded_mlp() if self.cfg.fold_head else None
            self.torch_runner.folded_mlp = self._folded_mlps[name]
        else:
            if name not in self._graph_runners:
                loader = self._graph_loaders(name)[self.backend_choice.name]
                self._graph_runners[name] = self._graph_runner(loader())
            self.runner = self._graph_runners[name]
        self._statistics = name

    def _apply_statistics(self, name: str) -> None:
        (self._shared_batchnorm if name == SHARED else self.batchnorm_bank).apply(self.model, name)

    def cache_dir(self) -> Path:
        from .export import default_cache_dir
        return default_cache_dir(self.cfg.cache_dir)

    def onnx_path(self, statistics: str = SHARED) -> Path:
        """The exported graph: cfg.onnx_path, or the cache's export of this model (made on first use)
        with the BatchNorm statistics of `statistics` (an operating point of the bank, or shared)."""
        from .export import EXPORT_FORMAT_VERSION, export_onnx
        if not self.backbone.exportable:
            raise RuntimeError("token-reduction baselines are not exported (PyTorch only)")
        if self.cfg.onnx_path:
            if not Path(self.cfg.onnx_path).is_file():
                raise RuntimeError(f"onnx_path {self.cfg.onnx_path} does not exist")
            if statistics != SHARED:
                raise RuntimeError(f"onnx_path {self.cfg.onnx_path} is one graph: it cannot carry the "
                                   f"BatchNorm statistics of operating point {statistics!r}")
            return Path(self.cfg.onnx_path)
        digest = self.model_hash or file_hash(self.cfg.model_path)
        tag = "" if statistics == SHARED else f"-bn-{statistics}"
        path = self.cache_dir() / "onnx" / f"{digest}{tag}-g{EXPORT_FORMAT_VERSION}-torch{torch.__version__}.onnx"
        if not path.is_file():
            log.info("exporting the model to ONNX (once per model%s): %s", tag and " and point", path)
            self._apply_statistics(statistics)
            try:
                export_onnx(self.model.cpu(), path)
            finally:
                self._apply_statistics(self._statistics)
                self.model.to(self.device)
        return path

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

    # ------------------------------------------------------------------ description
    def label_info(self) -> list[LabelInfo]:
        names = self.seg_classes if (self.task != "cls" and self.seg_classes) else self.classes
        return [LabelInfo(id=i, name=str(n), color=c) for i, (n, c) in enumerate(zip(names, label_colors(len(names))))]

    @property
    def num_supertokens(self) -> int | None:
        return int(self.backbone.num_supertokens) if self.kind.endswith("student") else None

    @property
    def budget_adjustable(self) -> bool:
        return self.backbone.budget_adjustable

    @property
    def min_budget(self) -> int:
        return int(self.backbone.budget_range(self.pre_cfg.max_centers)[0])

    @property
    def max_budget(self) -> int:
        return int(self.backbone.budget_range(self.pre_cfg.max_centers)[1])

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.dim)

    def operating_point(self, name: str) -> OperatingPoint:
        """The operating point called `name` (ConfigError when the model has none of that name)."""
        for op in self.operating_points:
            if op.name == name:
                return op
        raise ConfigError(f"unknown operating point {name!r}; this model has "
                          f"{[op.name for op in self.operating_points]}")

    def _resolve_operating_point(self, op: OperatingPoint | str | None) -> OperatingPoint | None:
        if op is None or isinstance(op, OperatingPoint):
            return None if op is None else fit_to_backbone(op, self.backbone)
        return self.operating_point(op)

    def _resolve_budget(self, budget: int | None, fusion_threshold: float | None, c: int,
                        op: OperatingPoint | None = None, max_centers: int | None = None
                        ) -> tuple[int | None, float | None, int]:
        """-> (budget passed to the backbone, threshold passed (also reported), reported token_budget).
        Defaults: the operating point's budget / threshold when one is given, else the config's;
        budgets are clamped to budget_range(max_centers) (default: the PreprocessConfig's)."""
        default_b, default_r = (op.budget, op.fusion_threshold) if op is not None else (
            self.cfg.budget, self.cfg.fusion_threshold)
        b = default_b if budget is None else budget
        r = default_r if fusion_threshold is None else fusion_threshold
        if not self.budget_adjustable:
            if (b is not None or r is not None) and not self._budget_warned:
                log.warning("model backbone is a %s with a fixed token count: token budget / fusion threshold "
                            "are ignored", self.kind)
                self._budget_warned = True
            return None, None, int(self.backbone.budget_range(c)[0])
        if b is not None:
            lo, hi = self.backbone.budget_range(self.pre_cfg.max_centers if max_centers is None else max_centers)
            b = int(min(max(int(b), int(lo)), int(hi)))
        # the gate's learned policy (merge pi > r, r = its training threshold unless given) always
        # applies; the budget caps what is left (forced merges of the highest-pi tokens). r > 1
        # disables the threshold (budget only).
        r = float(self.backbone.gate.threshold) if r is None else float(r)
        return b, r, c if b is None else min(b, c)

    # ------------------------------------------------------------------ inference
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
        t0 = time.perf_counter()
        self(cloud, budget=self.max_budget if self.budget_adjustable else None, **self._synthetic_kwargs())
        return (time.perf_counter() - t0) * 1e3

    def _synthetic_kwargs(self) -> dict:
        """Call arguments a synthetic cloud needs (a partseg model with category embedding: category 0)."""
        return {"category": 0} if getattr(self.head, "category", None) is not None else {}

    def calibrate(self, cloud: np.ndarray | None = None, repeats: int = 3,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
        """Median cost in ms of every operating point (name -> ms, cheapest first) on `cloud` (N, 3+F)
        or a synthetic sweep-like cloud of CALIBRATION_SWEEP_FACTOR x the top point's points, at most
        CALIBRATION_SWEEP_MAX (a sweep has several times more points than the richest point uses, and
        the rows the network does not see are labelled by the geometry beside it), after one warm-up
        call per point. The cost
        is the part of a call the point sets (operating_points.point_cost_ms: tokenize + encode +
        head); pre- and postprocessing grow with the input cloud whatever the point, so a caller
        measures them on its real clouds (the node counts them with its overhead).
        With overlap_geometry auto on a CPU, every point also runs both ways (geometry beside the
        network on one core less, or in line on all cores) and keeps the faster by median latency
        after preprocessing (overlap_by_point): beside wins at sparse points, where the geometry costs
        as much as the network, in line can win at the richest, where the network wants every core.
        The repeats run round-robin over the points, so a machine stall (0.3-1.7 s here) lands on
        one sample of several points instead of every sample of one; a point measured dearer than a
        richer one is given the richer one's cost (it cannot cost more). should_stop: checked before
        every call; True raises CalibrationStopped (a node shutting down during start-up)."""
        if repeats < 1:
            raise ValueError("calibrate needs repeats >= 1")
        if cloud is None:
            top = self.operating_points[-1].points
            cloud = synthetic_sweep(max(top, min(top * CALIBRATION_SWEEP_FACTOR, CALIBRATION_SWEEP_MAX)),
                                    self.in_channels, sweep_extent(self.pre_cfg), seed=self.cfg.seed)
        kw = self._synthetic_kwargs()
        ops = self.operating_points
        modes = (True, False) if self.cfg.overlap_geometry == "auto" and self.device.type == "cpu" and \
            torch.get_num_threads() > 1 else (None,)
        runs = [(op, mode) for op in ops for mode in modes]

        def timed(op: OperatingPoint, mode: bool | None) -> dict[str, float]:
            if should_stop is not None and should_stop():
                raise CalibrationStopped("calibration stopped before it was complete")
            return self(cloud, operating_point=op, overlap=mode, **kw).report.timings_ms

        for op in ops:                                # warm-up: one call per point (in the first way)
            timed(op, modes[0])
        samples: dict[tuple[str, bool | None], list[dict[str, float]]] = {(op.name, m): [] for op, m in runs}
        for _ in range(repeats):
            for op, mode in runs:
                samples[(op.name, mode)].append(timed(op, mode))
        after_preprocess = lambda t: t["total"] - t["preprocess"]                       # noqa: E731
        costs = {op.name: [point_cost_ms(t) for t in samples[(op.name, modes[0])]] for op in ops}
        if len(modes) == 2:
            for op in ops:
                beside, inline = (float(np.median([after_preprocess(t) for t in samples[(op.name, m)]])) for m in modes)
                self.overlap_by_point[op.name] = beside <= inline
                costs[op.name] = [point_cost_ms(t) for t in samples[(op.name, beside <= inline)]]
        out, ceiling = {}, math.inf
        for op in reversed(ops):                      # richest first: costs never rise towards cheaper points
            ceiling = min(ceiling, float(np.median(costs[op.name])))
            out[op.name] = ceiling
        return {op.name: out[op.name] for op in ops}

    def overlaps(self, op: OperatingPoint | None) -> bool:
        """Whether a call at `op` runs its geometry beside the network (see overlap_geometry)."""
        mode = self.cfg.overlap_geometry
        if mode != "auto":
            return mode == "always"
        return self.overlap_by_point.get("" if op is None else op.name, True)

    @contextlib.contextmanager
    def _network_threads(self, overlap: bool):
        """While the geometry worker holds a core, the network on CPU runs on one thread less."""
        threads = torch.get_num_threads()
        if not overlap or self.device.type != "cpu" or threads < 2:
            yield
            return
        torch.set_num_threads(threads - 1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def __call__(self, points: np.ndarray, budget: int | None = None, fusion_threshold: float | None = None,
                 category: int | None = None, operating_point: OperatingPoint | str | None = None,
                 overlap: bool | None = None, abandon: Callable[[], bool] | None = None) -> PredictorResult:
        """points (N, 3+F) or (H, W, 3+F) -> PredictorResult (see the module docstring).
        overlap: run the frame's geometry beside the network (None: as overlaps() says);
        abandon: asked between stages, True stops the call with FrameAbandoned."""
        t0 = time.perf_counter()
        op = self._resolve_operating_point(operating_point)
        self._use_statistics_of(op)
        pre_cfg = call_preprocess(self.pre_cfg, op)
        cloud = self._model_channels(as_cloud(points))
        pre = preprocess(cloud, pre_cfg, seed=self.cfg.seed)
        t1 = time.perf_counter()
        b, r, token_budget = self._resolve_budget(budget, fusion_threshold, pre.num_centers, op, pre_cfg.max_centers)
        name = "" if op is None else op.name
        if pre.num_points == 0:
            return self._empty(cloud.shape[0], pre, token_budget, r, t0, t1, name)
        if abandon is not None and abandon():
            raise FrameAbandoned("abandoned after preprocessing")
        category = self.cfg.category if category is None else category
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        overlap = self.overlaps(op) if overlap is None else overlap
        geometry = self.geometry_worker.submit(cloud, pre, int(getattr(self.head, "local_shape_k", 0) or 0),
                                               getattr(self.head, "local_shape_voxels", (0.0,)), threaded=overlap)
        try:
            with torch.inference_mode(), self._autocast(), self._network_threads(overlap):
                pts = torch.from_numpy(pre.points).to(self.device).unsqueeze(0)
                net = self.runner(pts, pre.xyz, pre.num_centers, gen, b, r, category,
                                  point_features=geometry.point_features)
            check_finite(net)
            if abandon is not None and abandon():
                geometry.cancel()
                raise FrameAbandoned("abandoned after the network")
            t4 = time.perf_counter()
            labels, confidence, segments = postprocess(cloud, pre, net, geometry.fill())
        finally:
            geometry.wait()                           # nothing of this frame outlives the call
        t5 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "tokenize": net.tokenized_at - t1, "encode": net.encoded_at - net.tokenized_at,
                   "head": t4 - net.encoded_at, "postprocess": t5 - t4, "total": t5 - t0}
        report = self._report(cloud.shape[0], pre, net, token_budget, r, timings, name)
        return PredictorResult(labels=labels, confidence=confidence, segments=segments,
                               centers=pre.to_input_frame(net.centers), embeddings=net.embeddings,
                               token_segments=net.token_segments, report=report)

    def _model_channels(self, cloud: np.ndarray) -> np.ndarray:
        """The channels the model uses (extra ones are ignored; too few are an error)."""
        if cloud.shape[1] < self.in_channels:
            raise ValueError(f"the model needs {self.in_channels} channels per point (xyz + "
                             f"{self.in_channels - 3} extra), the cloud has {cloud.shape[1]}")
        return cloud[:, :self.in_channels]

    def _report(self, n: int, pre: Preprocessed, net: NetworkOutput | None, token_budget: int,
                threshold: float | None, timings_s: dict[str, float], operating_point: str = "") -> FrameReport:
        return FrameReport(points_in=n, points_used=pre.num_points, points_unlabelled=int(n - pre.in_region.sum()),
                           tokens_in_encoder=net.tokens_in_encoder if net is not None else 0,
                           token_budget=int(token_budget),
                           fusion_threshold=math.nan if threshold is None else float(threshold),
                           num_centers=pre.num_centers if net is not None else 0, backend=self.backend,
                           precision=self.precision, model_hash=self.model_hash,
                           timings_ms={k: v * 1e3 for k, v in timings_s.items()}, operating_point=operating_point)

    def _empty(self, n: int, pre: Preprocessed, token_budget: int, threshold: float | None, t0: float, t1: float,
               operating_point: str = "") -> PredictorResult:
        """No point left after preprocessing: every row unlabelled."""
        timings = {"preprocess": t1 - t0, "tokenize": 0.0, "encode": 0.0, "head": 0.0, "postprocess": 0.0,
                   "total": time.perf_counter() - t0}
        return PredictorResult(labels=np.full(n, -1, dtype=np.int32), confidence=np.zeros(n, dtype=np.float32),
                               segments=np.full(n, -1, dtype=np.int32), centers=np.zeros((0, 3), np.float32),
                               embeddings=np.zeros((0, self.embedding_dim), np.float32),
                               token_segments=np.zeros(0, np.int32),
                               report=self._report(n, pre, None, token_budget, threshold, timings, operating_point))
