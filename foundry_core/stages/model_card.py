"""Stage `model-card`: a scene model's held-out accuracy and latency per operating point (a model
fine-tuned with operating points) or per token budget (one without), measured through the runtime
Predictor on full simulated LiDAR sweeps (the node's path, evaluation cropped to the model's
preprocessing region), written as docs/model_card.md (+ .json, .png); optionally ships the model as
fp16 weights with its preprocessing and its operating points (each with its held-out ``miou`` and
``latency_ms``) in the metadata (what the node loads by default)."""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..typed_yaml import to_dict
from ..configs import FinetuneConfig, OperatingPoint
from ..runtime.operating_points import to_meta
from ..runtime.predictor import Predictor, PredictorConfig
from ..runtime.preprocess import PreprocessConfig
from ..checkpoint import load_checkpoint, save_checkpoint
from ..metrics import confusion, mean_iou


def scene_preprocess(cfg: FinetuneConfig) -> PreprocessConfig:
    """The inference preprocessing matching a sim_scenes training config: the training crop
    (|x|, |y| <= crop), clouds capped at the training size, c = the training's groups per point."""
    crop = float(cfg.data.options.get("crop", 12.0))
    n, c = cfg.data.num_points, cfg.model.num_groups
    return PreprocessConfig(crop_box=[-crop, -crop, -10.0, crop, crop, 10.0], max_points=n,
                            min_centers=max(8, c // 4), max_centers=c, points_per_center=n / c)


def heldout_sweeps(cfg: FinetuneConfig, count: int = 16, lidar=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full LiDAR sweeps (N, 4) + labels of scenes the training never saw (after the test split's),
    captured by the default LiDAR or by `lidar` (a LidarConfig)."""
    from ..sim import LidarSensor, generate_scene
    opts = cfg.data.options
    first = int(opts.get("num_scenes", 200)) + int(opts.get("test_scenes", 0) or 0) + 1000
    sensor = LidarSensor() if lidar is None else LidarSensor(lidar)
    out = []
    for i in range(count):
        scene = generate_scene((int(opts.get("seed", 0)), first + i))
        pts, lab = sensor.scan(scene, pose=(0.0, 0.0, 0.4 * i), rng=np.random.default_rng(i))
        out.append((pts, lab))
    return out


def evaluate_settings(pred: Predictor, sweeps, settings: dict[str, dict], num_classes: int) -> dict:
    """mIoU / accuracy over points inside the model's region, tokens in the encoder, centers, points
    used and median latency per setting (row name -> Predictor call arguments), one warm-up each."""
    rows = {}
    for name, kw in settings.items():
        conf = np.zeros((num_classes, num_classes), np.int64)
        lat, tokens, centers, used = [], [], [], []
        pred(sweeps[0][0], **kw)                                      # warm-up
        for pts, lab in sweeps:
            res = pred(pts, **kw)
            conf += confusion(res.labels.astype(np.int64), lab.astype(np.int64), num_classes)
            lat.append(res.report.timings_ms["total"])
            tokens.append(res.report.tokens_in_encoder)
            centers.append(res.report.num_centers)
            used.append(res.report.points_used)
        rows[name] = {
            "miou": mean_iou(conf), "point_acc": 100.0 * np.trace(conf) / max(1, conf.sum()),
            "latency_ms_p50": statistics.median(lat), "tokens_in_encoder": float(np.mean(tokens)),
            "num_centers": float(np.mean(centers)), "points_used": float(np.mean(used)),
            "per_class_iou": (100 * np.diag(conf) / np.maximum(1, conf.sum(0) + conf.sum(1) - np.diag(conf))).tolist()}
    return rows


def evaluate_budgets(pred: Predictor, sweeps, budgets: list[int | None], num_classes: int) -> dict:
    """evaluate_settings per token budget (rows "full" for None, else the budget)."""
    return evaluate_settings(pred, sweeps, {"full" if b is None else str(b): {"budget": b} for b in budgets},
                             num_classes)


def evaluate_operating_points(pred: Predictor, sweeps, num_classes: int) -> dict:
    """evaluate_settings per operating point of the predictor (rows by name, cheapest first), each
    row with the point's points / centers / budget."""
    rows = evaluate_settings(pred, sweeps, {op.name: {"operating_point": op} for op in pred.operating_points},
                             num_classes)
    for op in pred.operating_points:
        rows[op.name].update(points=op.points, centers=op.centers, budget=op.budget)
    return rows


def measured_operating_points(points: list[OperatingPoint], rows: dict) -> list[OperatingPoint]:
    """The operating points with their held-out miou and median latency_ms from evaluate_operating_points."""
    return [replace(op, miou=float(rows[op.name]["miou"]), latency_ms=float(rows[op.name]["latency_ms_p50"]))
            for op in points]


def efficient_points(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """The measured points worth shipping, cheapest first: a point is dropped when a cheaper one is
    at least as accurate (it would only cost more), so accuracy rises with compute along the list."""
    kept: list[OperatingPoint] = []
    for op in sorted(points, key=lambda o: o.latency_ms):
        if not kept or op.miou > kept[-1].miou:
            kept.append(op)
    return kept


def majority_baseline(sweeps, pred: Predictor, num_classes: int, cls: int = 0) -> float:
    """mIoU of labelling every in-region point with one class (ground), the trivial baseline."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for pts, lab in sweeps:
        region = pred(pts).labels >= 0
        conf += confusion(np.full(int(region.sum()), cls), lab[region].astype(np.int64), num_classes)
    return mean_iou(conf)


def ship_fp16(model_path: str | Path, out: str | Path, preprocess: PreprocessConfig, card: dict,
              operating_points: list[OperatingPoint] | None = None) -> Path:
    """fp16 copy of a task model with its preprocessing, card summary and (measured) operating points."""
    tensors, meta = load_checkpoint(model_path)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    meta = {**meta, "preprocess": to_dict(preprocess), "model_card": card}
    if operating_points:
        meta["operating_points"] = to_meta(operating_points)
    return save_checkpoint(out, half, meta)


def scales_note(head: dict) -> str:
    """' at 0.1 / 0.3 m voxel scales' for multi-scale LocalShape heads, '' for the points themselves."""
    voxels = [float(v) for v in head.get("seg_local_shape_voxels") or [0.0]]
    if voxels == [0.0]:
        return ""
    return " at " + " / ".join("the points" if v == 0 else f"{v:g} m" for v in voxels) + " voxel scales"


def head_note(card: dict) -> str:
    """' (head: ...)' naming the per-point inputs of the model's segmentation head, '' for the plain head."""
    head = card.get("head") or {}
    parts = (["offset from the nearest token center"] if head.get("seg_point_geometry") else []) + \
        ([f"LocalShape descriptors of its {head['seg_local_shape_k']} nearest points{scales_note(head)}"]
         if head.get("seg_local_shape_k") else [])
    return f" (the head also reads each point's {' and '.join(parts)})" if parts else ""


def run_model_card(model_path: str, cfg: FinetuneConfig, out: str | Path, ship: str = "",
                   budgets: tuple = (None, 128, 96, 64, 48, 32, 16)) -> dict:
    pre = scene_preprocess(cfg)
    torch.manual_seed(0)
    sweeps = heldout_sweeps(cfg)
    _, meta = load_checkpoint(model_path)
    with_points = bool(meta.get("operating_points"))
    results, measured = {}, []
    for backend in ("onnxruntime", "torch"):     # the last (torch, the node's auto rung) is what ships
        pred = Predictor.from_checkpoint(model_path, PredictorConfig(preprocess=pre, backend=backend))
        k = len(pred.seg_classes)
        if with_points:
            results[pred.backend] = evaluate_operating_points(pred, sweeps, k)
            measured = measured_operating_points(pred.operating_points, results[pred.backend])
        else:
            results[pred.backend] = evaluate_budgets(pred, sweeps, list(budgets), k)
        print(f"[model-card] {pred.backend}: " + ", ".join(
            f"{b}: mIoU {r['miou']:.1f} / {r['latency_ms_p50']:.0f} ms" for b, r in results[pred.backend].items()),
            flush=True)
    base = majority_baseline(sweeps, pred, k)
    card = {"classes": pred.seg_classes, "heldout_sweeps": len(sweeps),
            "points_per_sweep": int(np.mean([len(p) for p, _ in sweeps])), "preprocess": to_dict(pre),
            "baseline_miou_all_ground": base, "results": results, "training": meta.get("metrics", {}),
            "supertokens": pred.num_supertokens, "axis": "operating_point" if with_points else "budget",
            "head": meta.get("head", {}),
            "operating_points": to_meta(measured), "shipped_latency_backend": pred.backend,
            "shipped_operating_points": [op.name for op in efficient_points(measured)]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    write_card(card, out, model_path, ship)
    plot_card(card, out.with_suffix(".png"))
    if ship:
        path = ship_fp16(model_path, ship, pre, {"baseline_miou": base, "results": results},
                         efficient_points(measured))
        print(f"[model-card] shipped {path} ({path.stat().st_size / 1e6:.1f} MB, fp16)", flush=True)
    print(f"[model-card] wrote {out}", flush=True)
    return card


def write_card(card: dict, out: Path, model_path: str, ship: str) -> None:
    lines = ["# Model card: default scene segmentation student (Foundry-Gate)", "",
             "Produced by `bash scripts/train_default_model.sh` (configs in `config/default_model/`): Point-JEPA "
             "teacher on simulated LiDAR scenes -> Foundry-Gate student distilled from it "
             f"(s = {card['supertokens']} SuperTokens) -> scene segmentation fine-tuning"
             f"{head_note(card)}. "
             f"Shipped as `{ship or model_path}` (fp16; the node loads it when `model_path` is empty).", "",
             f"Classes: {', '.join(card['classes'])}.", "",
             "Data: procedurally generated scenes (foundry_core.sim), 32-beam LiDAR sweeps, cropped to "
             f"{card['preprocess']['crop_box'][3]:.0f} m around the sensor. No real data was used.", "",
             f"Evaluation: {card['heldout_sweeps']} full sweeps (~{card['points_per_sweep']} points each) of scenes "
             "never used in training, through the runtime Predictor (every point inside the crop labelled); "
             "latency = the Predictor's end-to-end time per sweep on this machine (median).", "",
             f"Trivial baseline (every point 'ground'): mIoU {card['baseline_miou_all_ground']:.1f} %.", ""]
    by_point = card.get("axis") == "operating_point"
    for backend, rows in card["results"].items():
        lines += [f"### {backend}", ""] + (operating_point_table(rows, card["classes"]) if by_point
                                           else budget_table(rows))
    top = next(iter(card["results"].values()))
    shipped = card.get("shipped_operating_points") or list(top)
    top_name = shipped[-1] if by_point else "full"
    if by_point:
        lines += [f"Shipped operating points (cheapest first; a point is dropped when a cheaper one is at least as "
                  f"accurate): {', '.join(shipped)}. The node's controller picks one per frame.", ""]
    lines += [f"Per-class IoU ({'operating point ' + top_name if by_point else 'full budget'}): " + ", ".join(
              f"{c} {v:.1f}" for c, v in zip(card["classes"], top[top_name]["per_class_iou"])), "",
              "Limits: trained on simulation only; real sensors differ (intensity, noise, mounting, clutter). "
              "Fine-tune on your data with `foundry finetune --init <student.safetensors>`.", ""]
    out.write_text("\n".join(lines))


def budget_table(rows: dict) -> list[str]:
    """Markdown rows of evaluate_budgets."""
    lines = ["| token budget | tokens in encoder | mIoU % | point acc % | latency ms |", "|---|---|---|---|---|"]
    for b, r in rows.items():
        lines.append(f"| {b} | {r['tokens_in_encoder']:.1f} | {r['miou']:.1f} | {r['point_acc']:.1f} | "
                     f"{r['latency_ms_p50']:.1f} |")
    return lines + [""]


def operating_point_table(rows: dict, classes: list[str]) -> list[str]:
    """Markdown rows of evaluate_operating_points (cheapest first), per-class IoU included."""
    lines = ["| operating point | points | centers | budget | tokens in encoder | mIoU % | point acc % | latency ms | "
             + " | ".join(f"IoU {c}" for c in classes) + " |", "|---" * (8 + len(classes)) + "|"]
    for name, r in rows.items():
        budget = "all" if r["budget"] is None else r["budget"]
        lines.append(f"| {name} | {r['points']} | {r['centers']} | {budget} | {r['tokens_in_encoder']:.1f} | "
                     f"{r['miou']:.1f} | {r['point_acc']:.1f} | {r['latency_ms_p50']:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in r["per_class_iou"]) + " |")
    return lines + [""]


def plot_card(card: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_point = card.get("axis") == "operating_point"
    xlabel = "operating point (cheapest first)" if by_point else "tokens entering the encoder"
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for backend, rows in card["results"].items():
        x = list(range(len(rows))) if by_point else [r["tokens_in_encoder"] for r in rows.values()]
        ax[0].plot(x, [r["miou"] for r in rows.values()], "o-", label=backend)
        ax[1].plot(x, [r["latency_ms_p50"] for r in rows.values()], "o-", label=backend)
        if by_point:
            for a in ax:
                a.set_xticks(x, list(rows))
    ax[0].axhline(card["baseline_miou_all_ground"], color="gray", ls="--", label="all ground")
    ax[0].set(xlabel=xlabel, ylabel="mIoU %", title="held-out simulated sweeps")
    ax[1].set(xlabel=xlabel, ylabel="latency ms (p50)", title="end-to-end per sweep")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
