"""Stage `bench`: the cost benchmark of paper Tables 6 / 7, every model side by side in one process.

Object set (Table 6): B clouds x N points (64 x 1024), c = 64 groups of k = 32, ViT-S teacher (the
paper's 22M-parameter Point-JEPA size) vs Foundry s in {1, 2, 4, 8, 16} vs Foundry-Gate (s = 16) at
several token budgets vs ToMe down to 16 tokens; end to end = tokenizer (FPS, kNN, mini-PointNet)
+ encoder (+ DSO / CAU).
Scene (Table 7): one simulated LiDAR scene of 2^18 points through the budget-aware Predictor with a
scene segmentation head (preprocess, tokenize, encode, head, per-point labels for all 2^18 points).

Per model: parameters, FLOPs (torch FlopCounterMode under the MATH attention kernel, which the
counter sees, cross-checked against the analytic ViT count), median latency after warm-up
(models interleaved round by round so machine noise hits all alike), throughput, and peak memory
(peak RSS of a fresh process holding only that model and its input, running one call; on CUDA the
peak allocated GPU memory of that process). device=auto runs on CUDA when available.
Weights are random: cost does not depend on them (gate budgets force the token counts).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..configs import ModelConfig
from ..models.backbone import PointBackbone
from ..models.baselines import ToMeBackbone
from ..models.heads import SegmentationHead, TaskModel
from ..models.student import FoundryStudent


@dataclass
class BenchConfig:
    batch: int = 64
    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    encoder: str = "vit_s"
    supertokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
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


def peak_rss_mb(part: str, name: str, cfg: "BenchConfig") -> float | None:
    """Peak RSS (MB) of a fresh process (spawned: a fork would deadlock in torch's OpenMP pool) that
    holds only this model and its input and runs one call: the number a robot's process would see."""
    if not cfg.measure_memory:
        return None
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(part, name, cfg.__dict__, q))
    proc.start()
    try:
        return float(q.get(timeout=900))
    finally:
        proc.join(timeout=60)


def _peak_child(part: str, name: str, cfg_dict: dict, q) -> None:
    cfg = BenchConfig(**cfg_dict)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if part == "object":
        fn = object_models(cfg, only=name)[0][name][1]
    else:
        cloud = scene_cloud(cfg)
        pred, budget = scene_predictors(cfg, make_teacher(cfg, cfg.scene_max_centers), only=name)[name]
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


def object_models(cfg: BenchConfig, only: str | None = None
                  ) -> tuple[dict[str, tuple[torch.nn.Module, Callable]], torch.Tensor]:
    """name -> (module, call) for the object set (only: build just that one)."""
    from ..data.synthetic import generate_shapes
    teacher = make_teacher(cfg)
    shapes = generate_shapes(cfg.batch, cfg.num_points, seed=cfg.seed)
    pts = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32)[:cfg.num_points, :3]
                                     for p in shapes.points])).to(cfg.torch_device)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)            # noqa: E731 - same FPS start for all
    want = lambda name: only is None or name == only                      # noqa: E731
    models: dict[str, tuple[torch.nn.Module, Callable]] = {}
    if want("teacher"):
        models["teacher"] = (teacher, lambda: teacher(pts, gen()))
    for s in cfg.supertokens:
        if want(f"foundry_s{s}"):
            st = frozen(FoundryStudent.from_teacher(teacher, s))
            models[f"foundry_s{s}"] = (st, lambda st=st: st(pts, gen()))
    if any(want(f"gate_budget_{b}") for b in cfg.gate_budgets):
        gated = frozen(FoundryStudent.from_teacher(teacher, cfg.gate_supertokens, gate=True))
        for b in cfg.gate_budgets:       # budget only (r > 1): the budget sets the token count
            if want(f"gate_budget_{b}"):
                models[f"gate_budget_{b}"] = (gated, lambda b=b: gated(pts, gen(), budget=b, fusion_threshold=2.0))
    if want("tome16"):
        tome = frozen(ToMeBackbone.from_teacher(teacher, target_tokens=16))
        models["tome16"] = (tome, lambda: tome(pts, gen()))
    return models, pts


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


def scene_predictors(cfg: BenchConfig, teacher: PointBackbone, only: str | None = None) -> dict[str, tuple]:
    """name -> (Predictor, budget) on the scene (only: build just that one)."""
    from ..runtime.predictor import Predictor, PredictorConfig
    from ..runtime.preprocess import PreprocessConfig
    from ..sim import SIM_CLASSES
    pre = PreprocessConfig(max_points=cfg.scene_max_points, min_centers=min(64, cfg.scene_max_centers),
                           max_centers=cfg.scene_max_centers,
                           points_per_center=cfg.scene_max_points / cfg.scene_max_centers)
    meta = {"task": "sceneseg", "classes": ["scene"], "seg_classes": SIM_CLASSES}
    depth = teacher.depth
    layers = [depth // 3, 2 * depth // 3, depth]

    def predictor(backbone) -> Predictor:
        head = SegmentationHead(backbone.hidden_dim, len(SIM_CLASSES), layers)
        return Predictor(frozen(TaskModel(backbone, head)), meta,
                         PredictorConfig(preprocess=pre, backend="torch", device=cfg.torch_device.type))

    want = lambda name: only is None or name == only                      # noqa: E731
    out = {"teacher": (predictor(teacher), None)} if want("teacher") else {}
    for s in cfg.supertokens:
        if want(f"foundry_s{s}"):
            out[f"foundry_s{s}"] = (predictor(FoundryStudent.from_teacher(teacher, s)), None)
    if any(want(f"gate_budget_{b}") for b in cfg.scene_budgets):
        gated = predictor(FoundryStudent.from_teacher(teacher, cfg.gate_supertokens, gate=True))
        gated.cfg.fusion_threshold = 2.0         # budget only: the budget sets the token count
        for b in cfg.scene_budgets:
            if want(f"gate_budget_{b}"):
                out[f"gate_budget_{b}"] = (gated, b)
    if want("tome16"):
        out["tome16"] = (predictor(ToMeBackbone.from_teacher(teacher, target_tokens=16)), None)
    return out


# ------------------------------------------------------------------------------------------ run
def run_bench(cfg: BenchConfig, output: str | Path) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_path = Path(output)
    result: dict = {"machine": machine_name(), "config": cfg.__dict__, "object": {}, "scene": {}}
    models, pts = object_models(cfg)
    teacher = models["teacher"][0]
    print(f"[bench] {result['machine']}", flush=True)
    print(f"[bench] object set: {cfg.batch} x {cfg.num_points} points, c = {cfg.num_groups}, "
          f"k = {cfg.group_size}, {cfg.encoder}", flush=True)
    lat = interleaved_latency({k: fn for k, (_, fn) in models.items()}, cfg.repeats, cfg.warmup)
    for name, (module, fn) in models.items():
        result["object"][name] = {"latency_s": lat[name], "throughput_clouds_s": cfg.batch / lat[name],
                                  "flops": count_flops(fn), "params": params_of(module),
                                  "peak_mem_mb": peak_rss_mb("object", name, cfg)}
        print(f"[bench]   {name:16s} {lat[name] * 1e3:9.1f} ms  {result['object'][name]['flops'] / 1e9:8.1f} GFLOP",
              flush=True)
    d = teacher.dim
    result["flops_check"] = {"teacher_encoder_analytic": cfg.batch * vit_flops(cfg.num_groups, d, teacher.depth),
                             "teacher_encoder_counted": count_flops(
                                 lambda: teacher.encoder(torch.randn(cfg.batch, cfg.num_groups, d, device=pts.device),
                                                         torch.randn(cfg.batch, cfg.num_groups, d, device=pts.device)))}
    # ---- scene
    cloud = scene_cloud(cfg)
    print(f"[bench] scene: {len(cloud)} points", flush=True)
    tok = teacher.tokenizer
    x = torch.from_numpy(cloud).unsqueeze(0).to(cfg.torch_device)
    tok_fn = lambda: tok(x, num_groups=cfg.scene_max_centers, generator=torch.Generator().manual_seed(0))  # noqa: E731
    result["tokenize_2p18_s"] = interleaved_latency({"tok": tok_fn}, cfg.repeats, cfg.warmup)["tok"]
    preds = scene_predictors(cfg, make_teacher(cfg, cfg.scene_max_centers))
    fns = {name: (lambda p=p, b=b: p(cloud, budget=b)) for name, (p, b) in preds.items()}
    lat = interleaved_latency(fns, max(3, cfg.repeats // 2), 1)
    for name, (p, b) in preds.items():
        rep = p(cloud, budget=b).report
        result["scene"][name] = {"latency_s": lat[name], "flops": count_flops(fns[name]), "params": params_of(p.model),
                                 "peak_mem_mb": peak_rss_mb("scene", name, cfg), "tokens_in_encoder": rep.tokens_in_encoder,
                                 "num_centers": rep.num_centers, "timings_ms": rep.timings_ms}
        print(f"[bench]   {name:16s} {lat[name] * 1e3:9.1f} ms  tokens {rep.tokens_in_encoder:4d}  "
              f"peak {result['scene'][name]['peak_mem_mb'] or float('nan'):7.0f} MB", flush=True)
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
        return int(name[len("foundry_s"):])
    if name.startswith("gate_budget_"):
        return int(name[len("gate_budget_"):])
    return 16


def write_table(result: dict, path: Path) -> None:
    lines = [f"Machine: {result['machine']}", ""]
    for part, title in (("object", "Object set (Table 6)"), ("scene", "Scene of 2^18 points (Table 7)")):
        t = result[part]["teacher"]
        lines += [f"### {title}", "", "| model | params (M) | GFLOPs | latency (ms) | speed-up vs teacher | "
                  "peak memory (MB) |", "|---|---|---|---|---|---|"]
        for name, r in result[part].items():
            lines.append(f"| {name} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} | {r['latency_s'] * 1e3:.1f} | "
                         f"{t['latency_s'] / r['latency_s']:.2f}x | "
                         f"{'-' if r['peak_mem_mb'] is None else format(r['peak_mem_mb'], '.0f')} |")
        lines.append("")
    lines.append(f"Tokenising 2^18 points (FPS + kNN + mini-PointNet, c = {result['config']['scene_max_centers']}): "
                 f"{result['tokenize_2p18_s'] * 1e3:.0f} ms")
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, part in zip(axes, ("object", "scene")):
        for name, r in result[part].items():
            tokens = r.get("tokens_in_encoder", tokens_of(name, result["config"]))
            marker = "s" if name == "teacher" else ("^" if name.startswith("gate") else
                                                   ("x" if name.startswith("tome") else "o"))
            ax.scatter(tokens, r["latency_s"] * 1e3, marker=marker)
            ax.annotate(name, (tokens, r["latency_s"] * 1e3), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("tokens entering the encoder")
        ax.set_ylabel("latency (ms)")
        ax.set_title(part)
        ax.grid(alpha=0.3)
    fig.suptitle(result["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
