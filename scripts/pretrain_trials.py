"""Controlled pre-training trials (issue 14): one variant per call, scored by its validation probe curve.

The config's training split is split again (stratified, seeded) into train' and validation; the variant
pre-trains on train' and, after every epoch, the exported encoder is probed (linear SVM on max+mean
pooled tokens fitted on train', scored on validation) with the recipe's C and with C chosen by 3-fold
CV on train'. The same probes of randomly initialised encoders of the same model (init seeds
--random-seeds) give the baseline. The test split is never read. Everything lands in
docs/results/pretrain_trials/<name>.json, rewritten after every epoch ("complete": false until the
last one); the run checkpoints every epoch under runs/pretrain_trials/<name> and resumes bit for bit.
Usage: python scripts/pretrain_trials.py --name pos_every_layer_false --set model.pos_every_layer=false
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from foundry_core.configs import PretrainConfig
from foundry_core.data.point_dataset import PointCloudDataset
from foundry_core.data.shapeset import stratified_split
from foundry_core.data.sources import load_splits, pretraining_set
from foundry_core.models.backbone import PointBackbone
from foundry_core.stages.pretrain import PretrainTask, build_pretrain_model
from foundry_core.train.probe import probe_scores
from foundry_core.train.trainer import Trainer
from foundry_core.typed_yaml import load_config, to_dict


def validation_datasets(cfg: PretrainConfig, val_fraction: float) -> tuple[PointCloudDataset, PointCloudDataset,
                                                                           PointCloudDataset]:
    """(augmented train', un-augmented train', validation) carved from the config's training split."""
    train, _test = load_splits(cfg.data)          # the test split is dropped here and never used
    tr_idx, va_idx = stratified_split(train.labels, val_fraction, cfg.data.split_seed + 1)
    tr, va = train.subset(tr_idx), train.subset(va_idx)
    seed = cfg.run.seed
    return (pretraining_set(cfg.data, tr, cfg.extra_data, seed),            # + extra_data's clouds, if any
            PointCloudDataset(tr, cfg.data.num_points, None, seed=seed, train=False),
            PointCloudDataset(va, cfg.data.num_points, None, seed=seed, train=False))


def probe(backbone, train_view, val, cfg: PretrainConfig) -> dict[str, float]:
    """Validation probe of a backbone; its tokenizer groups with the native CPU kernels meanwhile
    (fpsample's vanilla FPS and pykdtree kNN: the same groups as the torch paths, several times faster)."""
    tokz = backbone.tokenizer
    saved = tokz.fps_method, tokz.knn_method
    tokz.fps_method, tokz.knn_method = "fpsample_exact", "kdtree"
    try:
        s = probe_scores(backbone, train_view, val, cfg.probe)
    finally:
        tokz.fps_method, tokz.knn_method = saved
    return {"val_probe_fixed_C": s["fixed"], "val_probe_cv": s["cv"], "val_probe_cv_C": s["cv_C"]}


def random_baseline(cfg: PretrainConfig, seeds: list[int], train_view, val, cache_dir: Path) -> dict:
    """Validation probes of randomly initialised encoders of cfg.model (cached per model + data)."""
    key = hashlib.sha1(json.dumps([to_dict(cfg.model), to_dict(cfg.data), to_dict(cfg.probe), seeds,
                                   len(val)], sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"random_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    rows = []
    for s in seeds:
        torch.manual_seed(s)
        rows.append({"init_seed": s, **probe(PointBackbone(cfg.model), train_view, val, cfg)})
    out = {"per_seed": rows, **{k: float(np.mean([r[k] for r in rows])) for k in ("val_probe_fixed_C", "val_probe_cv")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out


class TrialTask(PretrainTask):
    """PretrainTask whose evaluation probes only the exported encoder on validation data and
    rewrites the trial record."""

    def __init__(self, cfg: PretrainConfig, train_view, val, record):
        super().__init__(cfg, train_view, val)
        self.record = record
        self.trainer: Trainer | None = None

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        exported = model.target if self.cfg.jepa.export == "target" else model.backbone
        row = {"ema_momentum": self.momentum, "target_token_std": self.token_diversity(exported, "cpu"),
               **probe(exported, self.probe_train, self.probe_test, self.cfg)}
        self.record(self.trainer.history + [{"epoch": epoch + 1, **row}], complete=False)
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="config/pretrain_trials_infomr.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--runs", default="runs/pretrain_trials")
    ap.add_argument("--results", default="docs/results/pretrain_trials")
    ap.add_argument("--note", default="", help="what the variant tests (kept in the record)")
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between validation probes (and the last)")
    args = ap.parse_args()
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    cfg.run.out_dir = str(Path(args.runs) / args.name)
    cfg.run.eval_every, cfg.run.progress = args.eval_every, False
    out = Path(args.results) / f"{args.name}.json"
    t_start = time.time()
    train, train_view, val = validation_datasets(cfg, args.val_fraction)
    rnd = random_baseline(cfg, args.random_seeds, train_view, val, Path(args.runs))
    print(f"[trial {args.name}] random init: {rnd}", flush=True)
    torch.manual_seed(cfg.run.seed)
    model = build_pretrain_model(cfg)
    same_init = [r for r in rnd["per_seed"] if r["init_seed"] == cfg.run.seed]   # epoch 0 = that random init
    start = same_init[0] if same_init else probe(model.target if cfg.jepa.export == "target" else model.backbone,
                                                 train_view, val, cfg)

    def record(history: list[dict], complete: bool) -> None:
        curve = [h for h in history if "val_probe_cv" in h]
        trainer = task.trainer
        per_epoch = [trainer.steps_per_epoch * cfg.optim.batch_size / h["epoch_time_s"]
                     for h in history if "epoch_time_s" in h]
        data = {
            "name": args.name, "note": args.note, "command": "python " + " ".join(sys.argv),
            "complete": complete, "split": {"train": len(train), "validation": len(val),
                                            "rule": f"stratified {args.val_fraction} of the training split, seed "
                                                    f"data.split_seed + 1; test split unused"},
            "curve": {"epoch": [0] + [h["epoch"] for h in curve],
                      "val_probe_cv": [start["val_probe_cv"]] + [h["val_probe_cv"] for h in curve],
                      "val_probe_fixed_C": [start["val_probe_fixed_C"]] + [h["val_probe_fixed_C"] for h in curve],
                      "val_probe_cv_C": [start["val_probe_cv_C"]] + [h["val_probe_cv_C"] for h in curve],
                      "train_loss": [None] + [h.get("train_loss") for h in curve],
                      "target_token_std": [None] + [h.get("target_token_std") for h in curve]},
            "random_init": rnd,
            "gain_vs_random_cv": [h["val_probe_cv"] - rnd["val_probe_cv"] for h in curve],
            "samples_per_s": float(np.mean(per_epoch)) if per_epoch else None,
            "train_time_s": float(sum(h["epoch_time_s"] for h in history if "epoch_time_s" in h)),
            "wall_time_s": time.time() - t_start,
            "config": to_dict(cfg),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2))

    task = TrialTask(cfg, train_view, val, record)
    trainer = Trainer(cfg.run, cfg.optim, model, task, train, stage="pretrain", config=to_dict(cfg))
    task.trainer = trainer
    history = trainer.fit(resume=True)
    record(history, complete=len(history) == cfg.optim.epochs)
    print(f"[trial {args.name}] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
