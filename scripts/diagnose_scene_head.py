"""Why the scene model needs per-point shape (issue 12): a scene model's held-out confusion at one operating
point, next to a gradient-boosted classifier that sees only each point's LocalShape descriptors
(models/local_shape.py), and one that sees them plus the model's label. The classifiers train on sweeps
of training scenes and are scored on the same held-out sweeps as the model card.

    .venv/bin/python scripts/diagnose_scene_head.py --model foundry_core/weights/default_sceneseg.safetensors \
        --out docs/results/scene_head_diagnosis.json

If the descriptors alone label spheres, tables and clutter that the model sends to "box" or "ground",
the model lacks the points' own surface shape, not capacity or data.

    .venv/bin/python scripts/diagnose_scene_head.py --config config/default_model/sceneseg_multiscale.yaml \
        --scales 0 0.1,0.3 --out docs/results/local_shape_scales.json

--scales: instead, the descriptors-only classifier at several operating points for each LocalShape scale
set (0: the 16 nearest of the points; 0.1,0.3: among one point per 0.1 m and per 0.3 m voxel), on the
points the predictor's own preprocessing keeps: does accuracy rise with density at that scale?
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from foundry_core.configs import FinetuneConfig
from foundry_core.metrics import confusion, mean_iou
from foundry_core.models.local_shape import local_shape
from foundry_core.runtime.operating_points import call_preprocess
from foundry_core.runtime.predictor import Predictor, PredictorConfig
from foundry_core.runtime.preprocess import preprocess
from foundry_core.sim import LidarSensor, generate_scene
from foundry_core.stages.model_card import heldout_sweeps, scene_preprocess
from foundry_core.typed_yaml import load_config


def per_class_iou(conf: np.ndarray) -> list[float]:
    return (100 * np.diag(conf) / np.maximum(1, conf.sum(0) + conf.sum(1) - np.diag(conf))).tolist()


def sample(pred: Predictor, op, pts: np.ndarray, lab: np.ndarray, rng: np.random.Generator, n: int, k: int):
    """(descriptors (n, 7), model labels (n,), true labels (n,)) of n random labelled points of a sweep;
    the descriptors are computed among those n points (the density an operating point of n points sees)."""
    res = pred(pts, operating_point=op)
    ok = np.flatnonzero((res.labels >= 0) & (lab >= 0))
    sel = np.sort(rng.choice(ok, min(n, ok.size), replace=False))
    return local_shape(pts[sel, :3], k), res.labels[sel].astype(np.int64), lab[sel].astype(np.int64)


def kept_points(pred: Predictor, op, pts: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (M, 3), labels (M,)) of the labelled points the predictor's preprocessing keeps at `op`."""
    pre = preprocess(pts[:, :pred.in_channels], call_preprocess(pred.pre_cfg, op), seed=pred.cfg.seed)
    keep = lab[pre.source_index] >= 0
    return pre.points[keep, :3], lab[pre.source_index][keep].astype(np.int64)


def descriptor_miou(train, test, k: int, voxels: tuple[float, ...], num_classes: int) -> float:
    """Held-out mIoU of a gradient-boosted classifier on LocalShape descriptors alone."""
    x_tr = np.concatenate([local_shape(x, k, voxels) for x, _ in train])
    x_te = np.concatenate([local_shape(x, k, voxels) for x, _ in test])
    clf = HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=0)
    clf.fit(x_tr, np.concatenate([y for _, y in train]))
    return mean_iou(confusion(clf.predict(x_te), np.concatenate([y for _, y in test]), num_classes))


def scales_study(pred: Predictor, train_sweeps, test_sweeps, scales: list[tuple[float, ...]], ops: list,
                 k: int) -> dict:
    """{scale set: {operating point: descriptors-only held-out mIoU}} (see --scales)."""
    out: dict = {}
    for op in ops:
        name = op.name
        train = [kept_points(pred, op, p, lab) for p, lab in train_sweeps]
        test = [kept_points(pred, op, p, lab) for p, lab in test_sweeps]
        for voxels in scales:
            key = ",".join(f"{v:g}" for v in voxels)
            out.setdefault(key, {})[name] = miou = descriptor_miou(train, test, k, voxels, len(pred.seg_classes))
            print(f"[diagnose] scales {key:8s} {name:5s} ({op.points} points) descriptors-only mIoU {miou:5.1f}",
                  flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="foundry_core/weights/default_sceneseg.safetensors")
    ap.add_argument("--config", default="config/default_model/sceneseg.yaml")
    ap.add_argument("--operating-point", default="p8k")
    ap.add_argument("--train-sweeps", type=int, default=24)
    ap.add_argument("--test-sweeps", type=int, default=8)
    ap.add_argument("--k", type=int, default=16, help="LocalShape neighbours")
    ap.add_argument("--scales", nargs="*", default=None,
                    help="LocalShape scale sets to compare (e.g. 0 0.1,0.3), see the module docstring")
    ap.add_argument("--scale-points", default="p2k,p6k,p16k",
                    help="operating points of the --scales study (from --config)")
    ap.add_argument("--out", default="docs/results/scene_head_diagnosis.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = load_config(FinetuneConfig, args.config)
    pred = Predictor.from_checkpoint(args.model, PredictorConfig(preprocess=scene_preprocess(cfg), backend="torch"))
    rng = np.random.default_rng(0)
    sensor = LidarSensor()
    train_sweeps = [sensor.scan(generate_scene((0, i)), pose=(0.0, 0.0, 0.4 * i), rng=np.random.default_rng(i))
                    for i in range(args.train_sweeps)]               # training scenes 0.. (never the held-out ones)
    if args.scales:
        scales = [tuple(float(v) for v in s.split(",")) for s in args.scales]
        ops = [op for op in cfg.operating_points if op.name in args.scale_points.split(",")]
        study = scales_study(pred, train_sweeps, heldout_sweeps(cfg, args.test_sweeps), scales, ops, args.k)
        points = {op.name: op.points for op in ops}
        return write(args.out, {"model_preprocessing": args.model, "points": points, "local_shape_k": args.k,
                                "train_sweeps": args.train_sweeps, "heldout_sweeps": args.test_sweeps,
                                "descriptors_only_miou": study, "elapsed_s": time.time() - t0})
    op = pred.operating_point(args.operating_point)
    train = [sample(pred, op, pts, lab, rng, op.points, args.k) for pts, lab in train_sweeps]
    test = [sample(pred, op, p, lab, rng, op.points, args.k) for p, lab in heldout_sweeps(cfg, args.test_sweeps)]
    k = len(pred.seg_classes)
    onehot = np.eye(k)
    x_tr = {"local_shape": np.concatenate([f for f, _, _ in train]),
            "local_shape+model_label": np.concatenate([np.hstack([f, onehot[m]]) for f, m, _ in train])}
    x_te = {"local_shape": np.concatenate([f for f, _, _ in test]),
            "local_shape+model_label": np.concatenate([np.hstack([f, onehot[m]]) for f, m, _ in test])}
    y_tr, y_te = np.concatenate([y for _, _, y in train]), np.concatenate([y for _, _, y in test])
    model_conf = confusion(np.concatenate([m for _, m, _ in test]), y_te, k)
    own_conf = confusion(np.concatenate([m for _, m, _ in train]), y_tr, k)
    rows = {"model": {"miou": mean_iou(model_conf), "per_class_iou": per_class_iou(model_conf),
                      "confusion": model_conf.tolist()},
            # the same model on sweeps of its training scenes: as low as held-out = it underfits
            "model_on_training_scenes": {"miou": mean_iou(own_conf), "per_class_iou": per_class_iou(own_conf)}}
    for name in x_tr:
        clf = HistGradientBoostingClassifier(max_iter=200, class_weight="balanced", random_state=0)
        conf = confusion(clf.fit(x_tr[name], y_tr).predict(x_te[name]), y_te, k)
        rows[name] = {"miou": mean_iou(conf), "per_class_iou": per_class_iou(conf)}
    for name, row in rows.items():
        print(f"[diagnose] {name:24s} mIoU {row['miou']:5.1f}  " +
              " ".join(f"{c} {v:.0f}" for c, v in zip(pred.seg_classes, row["per_class_iou"])), flush=True)
    result = {"model": args.model, "operating_point": op.name, "points": op.points, "classes": pred.seg_classes,
              "train_sweeps": args.train_sweeps, "heldout_sweeps": args.test_sweeps, "local_shape_k": args.k,
              "rows": rows, "confusion_rows": "ground truth", "elapsed_s": time.time() - t0}
    return write(args.out, result)


def write(path: str, result: dict) -> int:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[diagnose] -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
