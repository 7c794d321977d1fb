"""Stage `bench`: the cost benchmark of paper Tables 6 / 7, every model side by side in one process.

Object set (Table 6): B clouds x N points (64 x 1024), c = 64 groups of k = 32, ViT-S teacher (the
paper's 22M-parameter Point-JEPA size) vs Foundry s in {1, 4, 16} with the teacher's tokenizer
(`foundry_s<s>_teacher_tok`) and with the student tokenizer of its own (`foundry_s<s>_student_tok`,
models/compact_pointnet.py) vs Foundry-Gate (s = 16) at several token budgets vs ToMe down to 16
tokens; end to end = tokenizer (FPS, kNN, mini-PointNet) + encoder (+ DSO / CAU).
Scene (Table 7): one simulated LiDAR scene of 2^18 points through the budget-aware Predictor with a
scene segmentation head (preprocess, tokenize, encode, head, per-point labels for all 2^18 points;
no token embeddings asked for, so on PyTorch a student's CAU, which only they need, does not run;
the exported graph always computes them).

`foundry_s<s>` is the fastest student configuration at s (its `configuration` names the row it
copies): the keys the targets are stated on.

Per model: parameters, FLOPs (torch FlopCounterMode under the MATH attention kernel, which the
counter sees, cross-checked against the analytic ViT count), median latency after warm-up on
PyTorch eager (`latency_s`) and, for the exportable models, on ONNX Runtime (the exported graph,
grouping outside it, `latency_onnxruntime_s`), all models and both backends interleaved round by
round so machine noise hits all alike, throughput, and peak memory (peak RSS of a fresh process
holding only that model and its input, running one call; on CUDA the peak allocated GPU memory of
that process). `inference_settings` measures what the defaults were chosen on: torch threads,
BatchNorm folding of the group encoders, ONNX Runtime intra-op threads x graph optimisation level.
device=auto runs on CUDA when available (the CLI then writes bench_cuda.json).
Weights are random: cost does not depend on them (gate budgets force the token counts).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..configs import ModelConfig, StudentTokenizerConfig
from ..models.backbone import PointBackbone
from ..models.baselines import ToMeBackbone
from ..models.compact_pointnet import batchnorm_folding
from ..models.heads import ClassificationHead, SegmentationHead, TaskModel
from ..models.student import FoundryStudent
from ..typed_yaml import to_dict

TEACHER_TOK, STUDENT_TOK = "_teacher_tok", "_student_tok"


@dataclass
class BenchConfig:
    batch: int = 64
    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    encoder: str = "vit_s"
    supertokens: list[int] = field(default_factory=lambda: [1, 4, 16])
    # the student tokenizer of the *_student_tok rows (kind compact; see models/compact_pointnet.py)
    student_tokenizer: StudentTokenizerConfig = field(default_factory=lambda: StudentTokenizerConfig(kind="compact"))
    gate_budgets: list[int] = field(default_factory=lambda: [48, 32, 24])
    gate_supertokens: int = 16        # s of the Foundry-Gate student (budgets must be >= s)
    scene_points: int = 1 << 18
    scene_budgets: list[int] = field(default_factory=lambda: [256, 64])
    scene_max_points: int = 32768
    scene_max_centers: int = 512
    repeats: int = 5
    warmup: int = 1
    threads: int = 0                  # 0: torch's default
    seed: int = 0
    device: str = "auto"              # auto (CUDA when available) | cpu | cuda
    measure_memory: bool = True       # one spawned process per model (slow to start); false: null
    onnxruntime: bool = True          # also run the exportable models' graphs on ONNX Runtime
    onnxruntime_only: list[str] = field(default_factory=list)   # those rows only (empty: every exportable row)
    settings: bool = True             # measure threads / BatchNorm folding / ORT optimisation levels

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        dev += f", {torch.cuda.get_device_name()}"
    return dev


def count_flops(fn: Callable[[], object]) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def vit_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Analytic FLOPs (2 x MACs) of a ViT encoder on one sequence: L (4 T D^2 + 2 r T D^2 + 2 T^2 D)."""
    return 2.0 * depth * (4 * tokens * dim ** 2 + 2 * mlp_ratio * tokens * dim ** 2 + 2 * tokens ** 2 * dim)


def peak_rss_mb(part: str, name: str, cfg: "BenchConfig", onnx_path: str = "") -> float | None:
    """Peak RSS (MB) of a fresh process (spawned: a fork would deadlock in torch's OpenMP pool) that
    holds only this model and its input and runs one call: the number a robot's process would see.
    onnx_path: the model's exported graph, run on ONNX Runtime instead of PyTorch."""
    if not cfg.measure_memory:
        return None
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(part, name, to_dict(cfg), onnx_path, q))
    proc.start()
    try:
        return float(q.get(timeout=900))
    finally:
        proc.join(timeout=60)


def _peak_child(part: str, name: str, cfg_dict: dict, onnx_path: str, q) -> None:
    from ..typed_yaml import from_dict
    cfg = from_dict(BenchConfig, cfg_dict)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if part == "object" and onnx_path:
        from ..models.tokenizer import PointTokenizer
        grouping = PointTokenizer(8, cfg.num_groups, cfg.group_size).to(cfg.torch_device)   # FPS / kNN only
        fn = onnx_call(grouping, onnx_runner(onnx_path, cfg), object_points(cfg), cfg)
    elif part == "object":
        fn = object_models(cfg, only=name)[0][name][1]
    else:
        cloud = scene_cloud(cfg)
        pred, budget = scene_predictors(cfg, make_teacher(cfg, cfg.scene_max_centers), only=name,
                                        onnx_paths={name: onnx_path} if onnx_path else None)[name]
        fn = lambda: pred(cloud, budget=budget)                           # noqa: E731
    gc.collect()
    if cfg.torch_device.type == "cuda":                                   # GPU memory is what runs out there
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        q.put(torch.cuda.max_memory_allocated() / 2 ** 20)
        return
    with open("/proc/self/clear_refs", "w") as f:                         # reset the high-water mark
        f.write("5")
    with torch.inference_mode():
        fn()
    q.put(_status_mb("VmHWM"))


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_latency(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of every fn, run round-robin (CUDA synchronised around each call)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                _sync()
                t0 = time.perf_counter()
                fn()
                _sync()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def params_of(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# ------------------------------------------------------------------------------------------ models
def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """eval mode, no parameter needs a gradient (inference cost only; FlopCounterMode's module
    tracker needs this)."""
    return module.eval().requires_grad_(False)


def make_teacher(cfg: BenchConfig, num_groups: int | None = None) -> PointBackbone:
    torch.manual_seed(cfg.seed)
    return frozen(PointBackbone(ModelConfig(encoder=cfg.encoder, num_groups=num_groups or cfg.num_groups,
                                            group_size=cfg.group_size))).to(cfg.torch_device)


def foundry_students(cfg: BenchConfig, teacher: PointBackbone, want: Callable[[str], bool]
                     ) -> dict[str, FoundryStudent]:
    """foundry_s<s>_teacher_tok and foundry_s<s>_student_tok for every s (those `want` accepts)."""
    out = {}
    for s in cfg.supertokens:
        for suffix, pointnet in ((TEACHER_TOK, None), (STUDENT_TOK, cfg.student_tokenizer.pointnet)):
            if want(f"foundry_s{s}{suffix}"):
                out[f"foundry_s{s}{suffix}"] = frozen(FoundryStudent.from_teacher(teacher, s,
                                                                                  tokenizer_pointnet=pointnet))
    return out


def object_points(cfg: BenchConfig) -> torch.Tensor:
    from ..data.synthetic import generate_shapes
    shapes = generate_shapes(cfg.batch, cfg.num_points, seed=cfg.seed)
    return torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32)[:cfg.num_points, :3]
                                      for p in shapes.points])).to(cfg.torch_device)


def object_models(cfg: BenchConfig, only: str | None = None
                  ) -> tuple[dict[str, tuple[torch.nn.Module, Callable]], torch.Tensor]:
    """name -> (module, call) for the object set (only: build just that one)."""
    teacher = make_teacher(cfg)
    pts = object_points(cfg)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)            # noqa: E731 - same FPS start for all
    want = lambda name: only is None or name == only                      # noqa: E731
    models: dict[str, tuple[torch.nn.Module, Callable]] = {}
    if want("teacher"):
        models["teacher"] = (teacher, lambda: teacher(pts, gen()))
    for name, st in foundry_students(cfg, teacher, want).items():
        models[name] = (st, lambda st=st: st(pts, gen()))
    if any(want(f"gate_budget_{b}") for b in cfg.gate_budgets):
        gated = frozen(FoundryStudent.from_teacher(teacher, cfg.gate_supertokens, gate=True))
        for b in cfg.gate_budgets:       # budget only (r > 1): the budget sets the token count
            if want(f"gate_budget_{b}"):
                models[f"gate_budget_{b}"] = (gated, lambda b=b: gated(pts, gen(), budget=b, fusion_threshold=2.0))
    if want("tome16"):
        tome = frozen(ToMeBackbone.from_teacher(teacher, target_tokens=16))
        models["tome16"] = (tome, lambda: tome(pts, gen()))
    return models, pts


def onnx_exportable(name: str, cfg: BenchConfig) -> bool:
    """The rows whose graph runs on ONNX Runtime (teacher and ungated Foundry students; with
    cfg.onnxruntime_only those of them it names)."""
    if not cfg.onnxruntime or (cfg.onnxruntime_only and name not in cfg.onnxruntime_only):
        return False
    return name == "teacher" or (name.startswith("foundry_s") and name.endswith((TEACHER_TOK, STUDENT_TOK)))


def onnx_runner(path: str | Path, cfg: BenchConfig, threads: int = 0, optimization: str = "all"):
    """An OnnxRunner of an exported graph on the bench's device (CPU provider, or CUDA's when present)."""
    from ..runtime.backends import load_onnxruntime
    from ..runtime.onnx_runner import OnnxRunner
    if threads or optimization != "all":
        return OnnxRunner(path, ["CPUExecutionProvider"], threads=threads, optimization=optimization)
    return load_onnxruntime(lambda: path, cfg.torch_device, threads=cfg.threads)


def export_object_graph(backbone, path: Path) -> Path:
    """The backbone's graph (tokenizer network + encoder; a 16-way classification head on top, a
    negligible cost) exported the way the runtime exports models."""
    from ..runtime.export import export_onnx
    torch.manual_seed(0)
    device = next(iter(backbone.parameters())).device
    model = frozen(TaskModel(backbone, ClassificationHead(backbone.dim, 16))).cpu()
    try:
        return export_onnx(model, path)
    finally:
        backbone.to(device)


def onnx_call(tokenizer, runner, pts: torch.Tensor, cfg: BenchConfig) -> Callable[[], dict]:
    """End to end on ONNX Runtime: FPS + kNN grouping (PyTorch, outside the graph), then the graph."""
    def fn() -> dict:
        centers, _, gidx = tokenizer.group(pts, None, torch.Generator().manual_seed(cfg.seed))
        groups = tokenizer.relative_groups(pts, centers, gidx)
        return runner({"groups": groups.cpu().numpy(), "centers": centers.cpu().numpy()})
    return fn


def scene_cloud(cfg: BenchConfig) -> np.ndarray:
    """2^18 points of simulated LiDAR sweeps of one scene (x, y, z)."""
    from ..sim import LidarConfig, LidarSensor, generate_scene
    scene = generate_scene(cfg.seed)
    sensor = LidarSensor(LidarConfig(beams=128, azimuth_samples=2048, dropout=0.0))
    clouds, total, i = [], 0, 0
    while total < cfg.scene_points:
        pts, _ = sensor.scan(scene, pose=(0.3 * i, 0.0, 0.1 * i), rng=np.random.default_rng(i))
        clouds.append(pts[:, :3])
        total += len(pts)
        i += 1
    return np.concatenate(clouds)[:cfg.scene_points].astype(np.float32)


SCENE_META_CLASSES = ["scene"]


def scene_task_models(cfg: BenchConfig, teacher: PointBackbone, only: str | None = None) -> dict[str, tuple]:
    """name -> (TaskModel with a scene segmentation head, budget) on the scene (only: that one)."""
    from ..sim import SIM_CLASSES
    depth = teacher.depth
    layers = [depth // 3, 2 * depth // 3, depth]

    def task_model(backbone) -> TaskModel:
        head = SegmentationHead(backbone.hidden_dim, len(SIM_CLASSES), layers)
        return frozen(TaskModel(backbone, head))

    want = lambda name: only is None or name == only                      # noqa: E731
    out = {"teacher": (task_model(teacher), None)} if want("teacher") else {}
    for name, st in foundry_students(cfg, teacher, want).items():
        out[name] = (task_model(st), None)
    if any(want(f"gate_budget_{b}") for b in cfg.scene_budgets):
        gated = task_model(FoundryStudent.from_teacher(teacher, cfg.gate_supertokens, gate=True))
        for b in cfg.scene_budgets:
            if want(f"gate_budget_{b}"):
                out[f"gate_budget_{b}"] = (gated, b)
    if want("tome16"):
        out["tome16"] = (task_model(ToMeBackbone.from_teacher(teacher, target_tokens=16)), None)
    return out


def scene_predictors(cfg: BenchConfig, teacher: PointBackbone, only: str | None = None,
                     onnx_paths: dict[str, str] | None = None) -> dict[str, tuple]:
    """name -> (Predictor, budget) on the scene (only: build just that one). onnx_paths: the rows
    (name -> exported graph) run on ONNX Runtime instead of PyTorch."""
    from ..runtime.predictor import Predictor, PredictorConfig
    from ..runtime.preprocess import PreprocessConfig
    from ..sim import SIM_CLASSES
    pre = PreprocessConfig(max_points=cfg.scene_max_points, min_centers=min(64, cfg.scene_max_centers),
                           max_centers=cfg.scene_max_centers,
                           points_per_center=cfg.scene_max_points / cfg.scene_max_centers)
    meta = {"task": "sceneseg", "classes": SCENE_META_CLASSES, "seg_classes": SIM_CLASSES}
    out, gated = {}, None
    for name, (model, budget) in scene_task_models(cfg, teacher, only).items():
        path = (onnx_paths or {}).get(name, "")
        pc = PredictorConfig(preprocess=pre, backend="onnxruntime" if path else "torch", onnx_path=path,
                             device=cfg.torch_device.type, threads=cfg.threads, embeddings=False)
        if name.startswith("gate_budget_"):         # one predictor serves every budget
            gated = gated or Predictor(model, meta, pc)
            gated.cfg.fusion_threshold = 2.0         # budget only: the budget sets the token count
            out[name] = (gated, budget)
        else:
            out[name] = (Predictor(model, meta, pc), budget)
    return out


# ------------------------------------------------------------------------------------------ run
def select_fastest(rows: dict[str, dict], supertokens: list[int]) -> dict[str, dict]:
    """foundry_s<s> rows: a copy of the faster (PyTorch latency) of foundry_s<s>_teacher_tok /
    _student_tok, with `configuration` naming it."""
    out = {}
    for s in supertokens:
        cands = [f"foundry_s{s}{sfx}" for sfx in (TEACHER_TOK, STUDENT_TOK) if f"foundry_s{s}{sfx}" in rows]
        if cands:
            best = min(cands, key=lambda n: rows[n]["latency_s"])
            out[f"foundry_s{s}"] = {**rows[best], "configuration": best}
    return out


def speedups(part: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Teacher latency / model latency, per backend (onnxruntime: both on ONNX Runtime)."""
    t = part["teacher"]
    out: dict[str, dict[str, float]] = {"torch": {}, "onnxruntime": {}}
    for name, r in part.items():
        out["torch"][name] = t["latency_s"] / r["latency_s"]
        if r.get("latency_onnxruntime_s") and t.get("latency_onnxruntime_s"):
            out["onnxruntime"][name] = t["latency_onnxruntime_s"] / r["latency_onnxruntime_s"]
    return out


def run_object(cfg: BenchConfig, result: dict, tmp: Path) -> None:
    models, pts = object_models(cfg)
    teacher = models["teacher"][0]
    print(f"[bench] object set: {cfg.batch} x {cfg.num_points} points, c = {cfg.num_groups}, "
          f"k = {cfg.group_size}, {cfg.encoder}", flush=True)
    fns = {k: fn for k, (_, fn) in models.items()}
    paths: dict[str, Path] = {}
    for name, (module, _) in models.items():
        if onnx_exportable(name, cfg):
            paths[name] = export_object_graph(module, tmp / f"object_{name}.onnx")
            fns[name + "@onnxruntime"] = onnx_call(module.tokenizer, onnx_runner(paths[name], cfg), pts, cfg)
    lat = interleaved_latency(fns, cfg.repeats, cfg.warmup)
    rows = {}
    for name, (module, fn) in models.items():
        rows[name] = {"latency_s": lat[name], "throughput_clouds_s": cfg.batch / lat[name],
                      "flops": count_flops(fn), "params": params_of(module),
                      "peak_mem_mb": peak_rss_mb("object", name, cfg)}
        if name in paths:
            rows[name]["latency_onnxruntime_s"] = lat[name + "@onnxruntime"]
            rows[name]["peak_mem_onnxruntime_mb"] = peak_rss_mb("object", name, cfg, str(paths[name]))
        ort_ms = rows[name].get("latency_onnxruntime_s", float("nan")) * 1e3
        print(f"[bench]   {name:24s} {lat[name] * 1e3:9.1f} ms (onnxruntime {ort_ms:7.1f})  "
              f"{rows[name]['flops'] / 1e9:8.1f} GFLOP", flush=True)
    rows.update(select_fastest(rows, cfg.supertokens))
    result["object"] = rows
    d = teacher.dim
    result["flops_check"] = {"teacher_encoder_analytic": cfg.batch * vit_flops(cfg.num_groups, d, teacher.depth),
                             "teacher_encoder_counted": count_flops(
                                 lambda: teacher.encoder(torch.randn(cfg.batch, cfg.num_groups, d, device=pts.device),
                                                         torch.randn(cfg.batch, cfg.num_groups, d, device=pts.device)))}
    if cfg.settings:
        st_name = f"foundry_s{max(cfg.supertokens)}{STUDENT_TOK}"
        result["inference_settings"] = measure_settings(cfg, models, st_name, paths.get(st_name), pts)


def measure_settings(cfg: BenchConfig, models: dict, st_name: str, onnx_path: Path | None, pts: torch.Tensor) -> dict:
    """Latency (s) of the teacher and one student under the settings the defaults rest on, measured
    interleaved: torch intra-op threads, the group encoders' inference path on / off ("folded":
    BatchNorms folded and a few groups at a time; "unfolded": one pass, BatchNorms applied), ONNX
    Runtime intra-op threads x graph optimisation level."""
    threads_now = torch.get_num_threads()
    fns: dict[str, Callable] = {}
    for name in ("teacher", st_name):
        if name not in models:
            continue
        fn = models[name][1]
        fns[f"{name} torch folded"] = fn
        fns[f"{name} torch unfolded"] = lambda fn=fn: _unfolded(fn)
        if cfg.torch_device.type == "cpu" and threads_now > 1:
            fns[f"{name} torch 1 thread"] = lambda fn=fn: _one_thread(fn, threads_now)
    if onnx_path is not None and cfg.torch_device.type == "cpu":
        tokenizer = models[st_name][0].tokenizer
        combos = [(threads_now, level) for level in ("disable", "basic", "extended", "all")]
        combos += [(1, "all")] if threads_now > 1 else []           # sessions are held at once: a few only
        for threads, level in combos:
            runner = onnx_runner(onnx_path, cfg, threads=threads, optimization=level)
            fns[f"{st_name} onnxruntime {threads} thread(s) {level}"] = onnx_call(tokenizer, runner, pts, cfg)
    lat = interleaved_latency(fns, cfg.repeats, 1)
    for k, v in lat.items():
        print(f"[bench]   setting {k:52s} {v * 1e3:9.1f} ms", flush=True)
    return {"latency_s": lat, "torch_threads": threads_now}


def _unfolded(fn: Callable):
    with batchnorm_folding(False):
        return fn()


def _one_thread(fn: Callable, restore: int):
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(restore)


def run_scene(cfg: BenchConfig, result: dict, tmp: Path) -> None:
    cloud = scene_cloud(cfg)
    print(f"[bench] scene: {len(cloud)} points", flush=True)
    x = torch.from_numpy(cloud).unsqueeze(0).to(cfg.torch_device)
    scene_teacher = make_teacher(cfg, cfg.scene_max_centers)
    st_tok = scene_teacher.tokenizer.with_pointnet(cfg.student_tokenizer.pointnet).eval().requires_grad_(False)
    tok_fns = {name: (lambda tok=tok: tok(x, num_groups=cfg.scene_max_centers,
                                          generator=torch.Generator().manual_seed(0)))
               for name, tok in (("teacher", scene_teacher.tokenizer), ("student", st_tok))}
    tok_lat = interleaved_latency(tok_fns, cfg.repeats, cfg.warmup)
    result["tokenize_2p18_s"], result["tokenize_2p18_student_tokenizer_s"] = tok_lat["teacher"], tok_lat["student"]
    preds = scene_predictors(cfg, scene_teacher)
    fns = {name: (lambda p=p, b=b: p(cloud, budget=b)) for name, (p, b) in preds.items()}
    paths: dict[str, str] = {}
    from ..runtime.export import export_onnx
    for name, (p, _) in preds.items():
        if onnx_exportable(name, cfg):
            paths[name] = str(export_onnx(p.model.cpu(), tmp / f"scene_{name}.onnx"))
            p.model.to(p.device)
    ort_preds = {}
    for name in paths:
        ort_preds.update(scene_predictors(cfg, scene_teacher, only=name, onnx_paths=paths))
        p, b = ort_preds[name]
        fns[name + "@onnxruntime"] = lambda p=p, b=b: p(cloud, budget=b)
    lat = interleaved_latency(fns, max(3, cfg.repeats // 2), 1)
    rows = {}
    for name, (p, b) in preds.items():
        rep = p(cloud, budget=b).report
        rows[name] = {"latency_s": lat[name], "flops": count_flops(fns[name]), "params": params_of(p.model),
                      "peak_mem_mb": peak_rss_mb("scene", name, cfg), "tokens_in_encoder": rep.tokens_in_encoder,
                      "num_centers": rep.num_centers, "timings_ms": rep.timings_ms}
        if name in paths:
            op, ob = ort_preds[name]
            rows[name].update({"latency_onnxruntime_s": lat[name + "@onnxruntime"],
                               "timings_ms_onnxruntime": op(cloud, budget=ob).report.timings_ms,
                               "peak_mem_onnxruntime_mb": peak_rss_mb("scene", name, cfg, paths[name])})
        ort_ms = rows[name].get("latency_onnxruntime_s", float("nan")) * 1e3
        print(f"[bench]   {name:24s} {lat[name] * 1e3:9.1f} ms (onnxruntime {ort_ms:7.1f})  tokens "
              f"{rep.tokens_in_encoder:4d}  peak {rows[name]['peak_mem_mb'] or float('nan'):7.0f} MB", flush=True)
    rows.update(select_fastest(rows, cfg.supertokens))
    result["scene"] = rows


def run_bench(cfg: BenchConfig, output: str | Path) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_path = Path(output)
    result: dict = {"machine": machine_name(), "config": to_dict(cfg), "object": {}, "scene": {},
                    "load_average_1min": {"start": os.getloadavg()[0]}}      # other jobs on the machine
    print(f"[bench] {result['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="foundry_bench_") as tmp:
        run_object(cfg, result, Path(tmp))
        run_scene(cfg, result, Path(tmp))
    result["load_average_1min"]["end"] = os.getloadavg()[0]
    result["speedup_vs_teacher"] = {part: speedups(result[part]) for part in ("object", "scene")}
    result["fastest"] = {part: {k: v["configuration"] for k, v in result[part].items() if "configuration" in v}
                         for part in ("object", "scene")}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    write_table(result, out_path.with_suffix(".md"))
    plot(result, out_path.with_suffix(".png"))
    print(f"[bench] wrote {out_path}, {out_path.with_suffix('.md')}, {out_path.with_suffix('.png')}", flush=True)
    return result


def tokens_of(name: str, cfg: dict) -> int:
    if name == "teacher":
        return cfg["num_groups"]
    if name.startswith("foundry_s"):
        return int(name[len("foundry_s"):].split("_")[0])
    if name.startswith("gate_budget_"):
        return int(name[len("gate_budget_"):])
    return 16


def write_table(result: dict, path: Path) -> None:
    load = result.get("load_average_1min", {})
    lines = [f"Machine: {result['machine']}; 1-min load average {load.get('start', float('nan')):.1f} at the "
             f"start, {load.get('end', float('nan')):.1f} at the end (other jobs)", ""]
    for part, title in (("object", "Object set (Table 6)"), ("scene", "Scene of 2^18 points (Table 7)")):
        t = result[part]["teacher"]
        lines += [f"### {title}", "", "| model | params (M) | GFLOPs | latency (ms) | speed-up vs teacher | "
                  "peak memory (MB) | onnxruntime (ms) | onnxruntime speed-up | onnxruntime peak (MB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in result[part].items():
            label = f"{name} (= {r['configuration']})" if "configuration" in r else name
            ort = r.get("latency_onnxruntime_s")
            ort_t = t.get("latency_onnxruntime_s")
            ort_mem = r.get("peak_mem_onnxruntime_mb")
            lines.append(f"| {label} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} | {r['latency_s'] * 1e3:.1f} | "
                         f"{t['latency_s'] / r['latency_s']:.2f}x | "
                         f"{'-' if r['peak_mem_mb'] is None else format(r['peak_mem_mb'], '.0f')} | "
                         f"{'-' if ort is None else format(ort * 1e3, '.1f')} | "
                         f"{'-' if not (ort and ort_t) else format(ort_t / ort, '.2f') + 'x'} | "
                         f"{'-' if ort_mem is None else format(ort_mem, '.0f')} |")
        lines.append("")
    lines.append(f"Tokenising 2^18 points (FPS + kNN + mini-PointNet, c = {result['config']['scene_max_centers']}): "
                 f"{result['tokenize_2p18_s'] * 1e3:.0f} ms with the teacher's tokenizer, "
                 f"{result['tokenize_2p18_student_tokenizer_s'] * 1e3:.0f} ms with the student tokenizer")
    settings = result.get("inference_settings")
    if settings:
        lines += ["", "### Inference settings (object set, latency in ms)", "", "| setting | latency (ms) |", "|---|---|"]
        lines += [f"| {k} | {v * 1e3:.1f} |" for k, v in settings["latency_s"].items()]
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, part in zip(axes, ("object", "scene")):
        for name, r in result[part].items():
            if "configuration" in r:                       # a copy of another row
                continue
            tokens = r.get("tokens_in_encoder", tokens_of(name, result["config"]))
            marker = "s" if name == "teacher" else ("^" if name.startswith("gate") else
                                                   ("x" if name.startswith("tome") else
                                                    ("D" if name.endswith(STUDENT_TOK) else "o")))
            ax.scatter(tokens, r["latency_s"] * 1e3, marker=marker)
            ax.annotate(name, (tokens, r["latency_s"] * 1e3), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("tokens entering the encoder")
        ax.set_ylabel("latency (ms, PyTorch)")
        ax.set_title(part)
        ax.grid(alpha=0.3)
    fig.suptitle(result["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
