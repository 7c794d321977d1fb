"""What precise BatchNorm (train/precise_batchnorm.py) changes on a fine-tuning checkpoint trained over
operating points: test-split mIoU at chosen points with the BatchNorm statistics as trained (running
averages of the last batches) and after SupervisedTask.recalibrate_batchnorm (the fine-tuning code path).

    .venv/bin/python scripts/batchnorm_recalibration_effect.py --run-config runs/ms_a/config.yaml \
        --checkpoint runs/ms_a/last.safetensors --points p1k p4k p16k --out docs/results/precise_batchnorm.json

The checkpoint is a Trainer checkpoint (last.safetensors) of a run whose `init` is a backbone file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from foundry_core.checkpoint import load_checkpoint, split_prefix
from foundry_core.configs import FinetuneConfig
from foundry_core.data.sources import make_datasets
from foundry_core.models.build import build_task_model
from foundry_core.models.io import load_backbone
from foundry_core.stages.finetune import SupervisedTask, evaluate_task
from foundry_core.typed_yaml import load_config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-config", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--points", nargs="+", required=True, help="operating point names of the config")
    ap.add_argument("--test-scenes", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    cfg = load_config(FinetuneConfig, args.run_config)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    model = build_task_model(cfg, load_backbone(cfg.init), train_set.shapes)
    tensors, meta = load_checkpoint(args.checkpoint)
    model.load_state_dict(split_prefix(tensors, "model"))
    ops = {op.name: op for op in cfg.operating_points}
    task = SupervisedTask(cfg, test_set, gated=model.backbone.budget_adjustable, train_set=train_set)
    sub = torch.utils.data.Subset(test_set, range(min(args.test_scenes, len(test_set))))
    sub.shapes = test_set.shapes

    def scores() -> dict[str, float]:
        return {n: evaluate_task(model, sub, cfg.task, batch_size=8, seed=cfg.run.seed,
                                 **task.compute_of(ops[n]))["test_miou"] for n in args.points}

    before = scores()
    print(f"[precise-bn] as trained: {before}", flush=True)
    used = task.recalibrate_batchnorm(model, epoch=int(meta.get("epoch", 0)))
    after = scores()
    print(f"[precise-bn] recomputed over {used} batches: {after}", flush=True)
    result = {"checkpoint": args.checkpoint, "epoch": meta.get("epoch"), "test_scenes": len(sub),
              "batches": used, "test_miou_as_trained": before, "test_miou_recomputed": after,
              "elapsed_s": time.time() - t0}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"[precise-bn] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
