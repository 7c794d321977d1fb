"""TensorRT engines built from the exported ONNX graph, with a cache that never loads a stale one.

One optimisation profile spans the whole operating range of the node (batch, centers c, encoder
slots L = token budget, points M), so a budget change between frames never rebuilds anything.

Cache. An engine is valid for exactly one (ONNX file, precision, TensorRT version, GPU, profile):
its key is the sha256 of those fields (ONNX content hash, not its path). Files:
``<cache_dir>/<key[:20]>.engine`` and a ``.json`` sidecar holding every field of the key. An engine
is loaded only when the sidecar exists and matches field by field and the engine's own hash
matches the sidecar; anything else (another GPU, another TensorRT, an edited ONNX, a changed
profile, a truncated file) is rebuilt. Both files are written atomically (temp file + rename).

TensorRT itself cannot be installed on the development machines (its PyPI packages fetch NVIDIA
wheels from elsewhere); everything except `build_engine` / `TensorRTRunner` is pure Python and
tested without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..models.local_shape import LOCAL_SHAPE_DIM
from .export import file_sha256, signature_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"profile range needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class EngineProfile:
    """Operating range of one optimisation profile (k and C are fixed by the model)."""

    batch: AxisRange
    centers: AxisRange
    slots: AxisRange
    points: AxisRange
    group_size: int
    channels: int
    point_features: int = LOCAL_SHAPE_DIM     # LocalShape columns (7 per scale)

    def shapes(self, input_names: list[str]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every graph input."""
        out = {}
        for attr in ("min", "opt", "max"):
            b, c, l, m = (getattr(self.batch, attr), getattr(self.centers, attr), getattr(self.slots, attr),
                          getattr(self.points, attr))
            full = {"groups": (b, c, self.group_size, self.channels), "centers": (b, c, 3), "slots": (l,),
                    "fusion_threshold": (1,), "points": (b, m, 3), "nn_idx": (b, m, 3),
                    "point_features": (b, m, self.point_features), "category": (b,)}
            for name in input_names:
                out.setdefault(name, []).append(full[name])
        return {k: tuple(v) for k, v in out.items()}


def profile_for(min_centers: int, max_centers: int, min_budget: int, max_points: int, group_size: int,
                channels: int, max_batch: int = 1, opt_centers: int | None = None,
                point_features: int = LOCAL_SHAPE_DIM) -> EngineProfile:
    """The profile covering a predictor's range: c in [min_centers, max_centers], budget slots in
    [min(min_budget, max_centers), max_centers], up to max_points points per cloud."""
    opt_c = opt_centers or max(min_centers, min(max_centers, (min_centers + max_centers) // 2))
    lo_slots = max(1, min(min_budget, max_centers))
    return EngineProfile(batch=AxisRange(1, 1, max_batch), centers=AxisRange(min_centers, opt_c, max_centers),
                         slots=AxisRange(lo_slots, max(lo_slots, min(opt_c, max_centers)), max_centers),
                         points=AxisRange(1, max(1, max_points // 2), max_points),
                         group_size=group_size, channels=channels, point_features=point_features)


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: str                 # canonical JSON of the EngineProfile

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def engine_key(onnx_path: str | Path, precision: str, profile: EngineProfile, tensorrt_version: str,
               gpu_name: str, compute_capability: str) -> EngineKey:
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    return EngineKey(onnx_sha256=file_sha256(onnx_path), precision=precision, tensorrt_version=tensorrt_version,
                     gpu_name=gpu_name, compute_capability=compute_capability,
                     profile=json.dumps(asdict(profile), sort_keys=True))


def engine_paths(cache_dir: str | Path, key: EngineKey) -> tuple[Path, Path]:
    stem = Path(cache_dir) / key.digest[:20]
    return stem.with_suffix(".engine"), stem.with_suffix(".json")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_engine(cache_dir: str | Path, key: EngineKey) -> bytes | None:
    """The serialised engine for `key` if the cache holds a valid one, else None (with the reason logged)."""
    engine, sidecar = engine_paths(cache_dir, key)
    if not engine.exists() or not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        log.warning("engine cache: unreadable sidecar %s (%s): rebuilding", sidecar, e)
        return None
    stale = [k for k, v in asdict(key).items() if meta.get(k) != v]
    if stale:
        log.warning("engine cache: %s was built for another %s: rebuilding", engine, ", ".join(stale))
        return None
    data = engine.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
        log.warning("engine cache: %s does not match its recorded hash (truncated or replaced): rebuilding", engine)
        return None
    return data


def store_engine(cache_dir: str | Path, key: EngineKey, data: bytes, build_s: float) -> Path:
    engine, sidecar = engine_paths(cache_dir, key)
    atomic_write(engine, data)
    meta = {**asdict(key), "engine_sha256": hashlib.sha256(data).hexdigest(), "build_s": round(build_s, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(sidecar, json.dumps(meta, indent=1).encode())
    return engine


# ------------------------------------------------------------------------------------ TensorRT itself
def tensorrt_module():
    """The tensorrt module, or RuntimeError saying why it cannot be used."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:                       # ImportError, or OSError from missing libnvinfer
        raise RuntimeError(f"TensorRT python bindings unavailable ({type(e).__name__}: {e})") from None
    return trt


def gpu_identity() -> tuple[str, str]:
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def build_engine(onnx_path: str | Path, profile: EngineProfile, precision: str, input_names: list[str]) -> bytes:
    """Parse the ONNX file and build a serialised engine with one profile (logs progress)."""
    trt = tensorrt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.shapes(input_names).items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    log.info("building TensorRT %s engine from %s (first build takes minutes) ...", precision, onnx_path)
    t0 = time.perf_counter()
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    log.info("TensorRT engine built in %.0f s", time.perf_counter() - t0)
    return bytes(data)


def _progress_monitor(trt):
    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.last = 0.0

        def phase_start(self, parent, name, steps):
            log.info("TensorRT build: %s (%d steps)", name, steps)

        def step_complete(self, name, step):
            if time.monotonic() - self.last > 10:
                self.last = time.monotonic()
                log.info("TensorRT build: %s step %d", name, step)
            return True

        def phase_finish(self, name):
            pass
    return Progress()


def load_or_build(onnx_path: str | Path, cache_dir: str | Path, profile: EngineProfile, precision: str,
                  input_names: list[str]) -> bytes:
    """Cached engine for this exact configuration, else a fresh build stored in the cache."""
    trt = tensorrt_module()
    name, cc = gpu_identity()
    key = engine_key(onnx_path, precision, profile, trt.__version__, name, cc)
    data = cached_engine(cache_dir, key)
    if data is not None:
        log.info("TensorRT engine from cache %s", engine_paths(cache_dir, key)[0])
        return data
    t0 = time.perf_counter()
    data = build_engine(onnx_path, profile, precision, input_names)
    store_engine(cache_dir, key, data, time.perf_counter() - t0)
    return data


def engine_for_model(model, onnx_path: str | Path, cache_dir: str | Path, precision: str, min_centers: int,
                     max_centers: int, max_points: int) -> tuple[bytes, list[str]]:
    """(engine, graph input names) of a task model's exported graph over the predictor's whole range:
    c in [min_centers, max_centers], budgets from the model's s (or min_centers) up, <= max_points."""
    sig = signature_of(model)
    names = sig.input_names
    tok = model.backbone.tokenizer
    s = model.backbone.budget_range(min_centers)[0]           # the smallest budget: s (students) or c
    profile = profile_for(min_centers, max_centers, s, max_points, tok.group_size, tok.in_channels,
                          point_features=sig.local_shape_dim or LOCAL_SHAPE_DIM)
    return load_or_build(onnx_path, Path(cache_dir) / "engines", profile, precision, names), names


class TensorRTRunner:
    """Same call contract as OnnxRunner: feeds {name: array} -> {output: array}, on CUDA tensors."""

    def __init__(self, engine_bytes: bytes, input_names: list[str], output_names: list[str]):
        import torch
        trt = tensorrt_module()
        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        self.input_names, self.output_names = input_names, output_names
        self.stream = torch.cuda.Stream()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.int64 if name in ("segments", "tokens_in_encoder") else torch.float32
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}
