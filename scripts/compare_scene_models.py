"""A candidate scene model against the shipped one (issue 12): held-out mIoU and per-class IoU at every
operating point of the config, both models on the same held-out sweeps through the runtime Predictor
(torch backend), so a candidate ships only when it is better at every point.

    .venv/bin/python scripts/compare_scene_models.py --candidate runs/v5/isqrt30/model.safetensors \
        --out docs/results/candidate_sceneseg_v5.json

Latencies are recorded but are only comparable when nothing else runs; mIoU is.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from foundry_core.configs import FinetuneConfig
from foundry_core.runtime.predictor import Predictor, PredictorConfig
from foundry_core.stages.model_card import evaluate_settings, heldout_sweeps, scene_preprocess
from foundry_core.typed_yaml import load_config

SHIPPED = "foundry_core/weights/default_sceneseg.safetensors"
NOISE_POINTS = 1.0      # the allowance: "better" means not more than this below at any point


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--baseline", default=SHIPPED)
    ap.add_argument("--config", default="config/default_model/sceneseg_local_shape.yaml")
    ap.add_argument("--sweeps", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = load_config(FinetuneConfig, args.config)
    torch.manual_seed(0)
    sweeps = heldout_sweeps(cfg, args.sweeps)
    settings = {op.name: {"operating_point": op} for op in cfg.operating_points}
    t0 = time.time()
    models, classes = {}, []
    for role, path in (("baseline", args.baseline), ("candidate", args.candidate)):
        pred = Predictor.from_checkpoint(path, PredictorConfig(preprocess=scene_preprocess(cfg), backend="torch"))
        classes = pred.seg_classes
        rows = evaluate_settings(pred, sweeps, settings, len(classes))
        models[role] = {"model": path, "operating_points": rows}
        print(f"[compare] {role}: " + ", ".join(f"{n} {r['miou']:.1f}" for n, r in rows.items()), flush=True)
    delta = {n: models["candidate"]["operating_points"][n]["miou"] - models["baseline"]["operating_points"][n]["miou"]
             for n in settings}
    cand = models["candidate"]["operating_points"]
    names = list(settings)
    result = {"config": args.config, "heldout_sweeps": len(sweeps), "classes": classes, "models": models,
              "miou_delta": delta,
              "better_at_every_point": all(d >= -NOISE_POINTS for d in delta.values()),
              "candidate_monotone": all(cand[b]["miou"] >= cand[a]["miou"] - NOISE_POINTS
                                        for a, b in zip(names, names[1:])),
              "elapsed_s": time.time() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("[compare] candidate - baseline mIoU: " + ", ".join(f"{n} {d:+.1f}" for n, d in delta.items())
          + f"; better at every point: {result['better_at_every_point']} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
