"""Why the scene model needs per-point shape (issue 12): a scene model's held-out confusion at one operating
point, next to a gradient-boosted classifier that sees only each point's LocalShape descriptors
(models/local_shape.py), and one that sees them plus the model's label. The classifiers train on sweeps
of training scenes and are scored on the same held-out sweeps as the model card.

    .venv/bin/python scripts/diagnose_scene_head.py --model foundry_core/weights/default_sceneseg.safetensors \
        --out docs/results/scene_head_diagnosis.json

If the descriptors alone label spheres, tables and clutter that the model sends to "box" or "ground",
the model lacks the points' own surface shape, not capacity or data.
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
from foundry_core.runtime.predictor import Predictor, PredictorConfig
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="foundry_core/weights/default_sceneseg.safetensors")
    ap.add_argument("--config", default="config/default_model/sceneseg.yaml")
    ap.add_argument("--operating-point", default="p8k")
    ap.add_argument("--train-sweeps", type=int, default=24)
    ap.add_argument("--test-sweeps", type=int, default=8)
    ap.add_argument("--k", type=int, default=16, help="LocalShape neighbours")
    ap.add_argument("--out", default="docs/results/scene_head_diagnosis.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = load_config(FinetuneConfig, args.config)
    pred = Predictor.from_checkpoint(args.model, PredictorConfig(preprocess=scene_preprocess(cfg), backend="torch"))
    op = pred.operating_point(args.operating_point)
    rng = np.random.default_rng(0)
    sensor = LidarSensor()
    train = [sample(pred, op, *sensor.scan(generate_scene((0, i)), pose=(0.0, 0.0, 0.4 * i),
                                           rng=np.random.default_rng(i)), rng, op.points, args.k)
             for i in range(args.train_sweeps)]                      # training scenes 0.. (never the held-out ones)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[diagnose] -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
