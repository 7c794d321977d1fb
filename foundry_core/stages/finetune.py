"""Stage `finetune`: supervised training of a backbone + head (classification, part or scene
segmentation), from a pre-trained backbone or from random initialisation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..typed_yaml import ConfigError, to_dict
from ..configs import FinetuneConfig, OperatingPoint
from ..data.point_dataset import PointCloudDataset
from ..data.sources import make_datasets
from ..models.backbone import PointBackbone
from ..models.build import build_task_model, head_options
from ..models.batchnorm_bank import BatchNormBank
from ..models.heads import TaskModel
from ..models.io import load_backbone, load_task_model, save_task_model
from ..metrics import accuracy, confusion, instance_part_miou, mean_iou
from ..train.precise_batchnorm import recompute_batchnorm
from ..train.trainer import Trainer
from .common import decay_groups, prepare_run_dir


@torch.no_grad()
def evaluate_task(model: TaskModel, dataset: PointCloudDataset, task: str, batch_size: int = 32,
                  seed: int = 0, **compute) -> dict[str, float]:
    """Test metrics: accuracy (cls) or mIoU (segmentation; partseg also instance mIoU).
    compute: num_centers / budget / fusion_threshold of the backbone (an operating point)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    preds, gts = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        pts = batch["points"].to(device)
        cat = batch["category"].to(device) if "category" in batch else None
        logits = model.head(model.backbone(pts, generator=gen, **compute), pts, cat)
        if task == "partseg" and dataset.shapes.category_of_seg is not None:
            allowed = torch.as_tensor(dataset.shapes.category_of_seg, device=device)[None, None, :] == cat[:, None, None]
            logits = logits.masked_fill(~allowed, float("-inf"))
        preds.append(logits.argmax(-1).cpu().numpy())
        gts.append((batch["label"] if task == "cls" else batch["seg"]).numpy())
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    if task == "cls":
        return {"test_acc": accuracy(pred, gt)}
    k = len(dataset.shapes.seg_classes)
    out = {"test_miou": mean_iou(confusion(pred.reshape(-1), gt.reshape(-1), k)),
           "test_point_acc": accuracy(pred.reshape(-1), gt.reshape(-1))}
    if task == "partseg" and dataset.shapes.category_of_seg is not None:
        cos = np.asarray(dataset.shapes.category_of_seg)
        parts = [np.flatnonzero(cos == c) for c in dataset.shapes.labels]
        out["test_instance_miou"] = instance_part_miou(pred, gt, parts)
    return out


class SupervisedTask:
    """Trainer plug-in: (label-smoothed) cross-entropy, test metrics as evaluation."""

    def __init__(self, cfg: FinetuneConfig, test_set: PointCloudDataset, class_weights: torch.Tensor | None = None,
                 gated: bool = False, train_set: PointCloudDataset | None = None):
        self.cfg, self.test_set, self.class_weights = cfg, test_set, class_weights
        self.gated = gated                # the backbone takes a token budget (operating points set it)
        self.train_set = train_set        # the batches BatchNorm statistics are recomputed on (None: not)

    def target_and_category(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's targets (labels, or per-point seg labels) and object categories (partseg only)."""
        target = batch["label"] if self.cfg.task == "cls" else batch["seg"]
        return target, (batch.get("category") if self.cfg.task == "partseg" else None)

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target, cat = self.target_and_category(batch)
        points, target, compute = self.operating_point_batch(batch["points"], target)
        logits = net(points, cat, **compute)
        w = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), weight=w,
                               label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(-1) == target).float().mean().item() * 100
        return loss, {"acc": acc}

    def operating_point_batch(self, points: torch.Tensor, target: torch.Tensor, op: OperatingPoint | None = None,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """With operating points: one drawn for the batch (torch RNG, so resume is exact; weighted by
        cfg.operating_point_weights when given; or `op`), its
        number of points subsampled from each cloud (B, N, C) -> (B, P, C) (per-point targets alike),
        and the backbone's num_centers / budget / fusion_threshold; without: the batch as it is."""
        ops = self.cfg.operating_points
        if not ops:
            return points, target, {}
        if op is None and self.cfg.operating_point_weights:
            w = torch.tensor(self.cfg.operating_point_weights, dtype=torch.float64)
            op = ops[int(torch.multinomial(w, 1, generator=generator))]
        elif op is None:
            op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
        if op.points < points.shape[1]:
            keep = torch.randperm(points.shape[1], generator=generator)[:op.points].to(points.device)
            points = points[:, keep]
            target = target[:, keep] if self.cfg.task != "cls" else target
        return points, target, self.compute_of(op)

    def compute_of(self, op: OperatingPoint) -> dict:
        """The backbone arguments of an operating point (the budget only for a gated student)."""
        compute = {"num_centers": op.centers}
        if self.gated:
            compute.update(budget=op.budget, fusion_threshold=op.fusion_threshold)
        return compute

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass

    def evaluate(self, model: TaskModel, epoch: int) -> dict[str, float]:
        """Test metrics, at the top operating point when the model has a compute range (after its
        BatchNorm statistics are recomputed over every point, recalibrate_batchnorm)."""
        self.recalibrate_batchnorm(model, epoch)
        compute = self.compute_of(self.cfg.operating_points[-1]) if self.cfg.operating_points else {}
        return evaluate_task(model, self.test_set, self.cfg.task, seed=self.cfg.run.seed, **compute)

    def batchnorm_bank(self, model: TaskModel, epoch: int, only: list[str] | None = None,
                       keep: BatchNormBank | None = None) -> BatchNormBank:
        """BatchNorm statistics of every operating point on its own batches (bn_recalibration_batches
        each, models/batchnorm_bank.py); the model keeps its shared statistics. only: recompute these
        points and take the others from `keep`, which must hold them (a point added to a trained model's
        range)."""
        shared, bank = BatchNormBank(), BatchNormBank()
        shared.record("shared", model)
        for op in self.cfg.operating_points:
            if only is not None and op.name not in only:
                bank.stats[op.name] = keep.stats[op.name]
            elif self.recalibrate_batchnorm(model, epoch, ops=[op]):
                bank.record(op.name, model)
        shared.apply(model, "shared")
        return bank

    def recalibrate_batchnorm(self, model: TaskModel, epoch: int, ops: list[OperatingPoint] | None = None) -> int:
        """With operating points and a training set: BatchNorm statistics averaged over
        cfg.bn_recalibration_batches training batches, the points (`ops`, default all) taken in turn
        (a generator of its own: the training RNG stream is untouched); returns the batches used."""
        ops, n = (self.cfg.operating_points if ops is None else ops), self.cfg.bn_recalibration_batches
        if not ops or not n or self.train_set is None or len(self.train_set) == 0:
            return 0
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 1000 + epoch)
        loader = DataLoader(self.train_set, batch_size=self.cfg.optim.batch_size, shuffle=True, generator=gen)

        def batches():
            while True:                     # as many passes as n batches need
                yield from loader

        turn = iter(range(n))

        def forward(net: nn.Module, batch: dict[str, torch.Tensor]) -> None:
            op = ops[next(turn) % len(ops)]
            target, cat = self.target_and_category(batch)
            points, _, compute = self.operating_point_batch(batch["points"], target, op=op, generator=gen)
            net(points.to(device), None if cat is None else cat.to(device), generator=gen, **compute)

        return recompute_batchnorm(model, batches(), forward, n)

    def param_groups(self, model: TaskModel) -> list[dict]:
        o = self.cfg.optim
        return (decay_groups(model.backbone, lr_scale=o.backbone_lr_scale, frozen_epochs=o.frozen_epochs)
                + decay_groups(model.head))


#: Largest ratio between two class weights (a class of 0.1 % of the points must not swamp the loss).
MAX_CLASS_WEIGHT_RATIO = 50.0


def segmentation_class_weights(cfg: FinetuneConfig, shapes) -> torch.Tensor | None:
    """class_weighting inverse_sqrt: w_k = 1 / sqrt(f_k) of the training points' class frequencies;
    inverse: w_k = 1 / f_k, capped at :data:`MAX_CLASS_WEIGHT_RATIO` times the smallest weight; both
    normalised to mean 1 over the classes present (absent classes get weight 0)."""
    if cfg.task == "cls" or cfg.class_weighting == "none":
        return None
    k = len(shapes.seg_classes)
    counts = np.bincount(np.concatenate([np.asarray(s).reshape(-1) for s in shapes.seg]), minlength=k)[:k]
    freq = counts / max(1, counts.sum())
    power = 1.0 if cfg.class_weighting == "inverse" else 0.5
    w = np.where(counts > 0, 1.0 / np.maximum(freq, 1e-12) ** power, 0.0)
    present = counts > 0
    w[present] = np.minimum(w[present], MAX_CLASS_WEIGHT_RATIO * w[present].min())
    w = w / w[present].mean()
    print(f"[finetune] class weights {dict(zip(shapes.seg_classes, np.round(w, 2).tolist()))}", flush=True)
    return torch.tensor(w, dtype=torch.float32)


def continue_head(model: TaskModel, cfg: FinetuneConfig, shapes) -> None:
    """init_head: the head of the task model cfg.init (same task, classes and head options) into model.head."""
    done, meta = load_task_model(cfg.init)
    want = {"task": cfg.task, "classes": list(shapes.classes), "seg_classes": shapes.seg_classes}
    have = {"task": meta.get("task"), "classes": list(meta.get("classes") or []), "seg_classes": meta.get("seg_classes")}
    if cfg.task == "cls":
        want.pop("seg_classes"), have.pop("seg_classes")
    else:
        want.pop("classes"), have.pop("classes")
    shape = {k: v for k, v in head_options(cfg).items() if k != "head_dropout"}
    stored = {k: meta.get("head", {}).get(k) for k in shape}
    if want != have or shape != stored:
        raise ConfigError(f"init_head: {cfg.init} has {have} and head {stored}; this run needs {want} and {shape}")
    model.head.load_state_dict({k: v.float() for k, v in done.head.state_dict().items()})


def run_finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tune and export backbone + head to <out_dir>/model.safetensors; returns final metrics."""
    out = prepare_run_dir(cfg.run.out_dir, cfg)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    if cfg.init:
        backbone = load_backbone(cfg.init)
        if backbone.cfg.num_groups != cfg.model.num_groups or backbone.cfg.group_size != cfg.model.group_size:
            backbone.tokenizer.num_groups, backbone.tokenizer.group_size = cfg.model.num_groups, cfg.model.group_size
    else:
        backbone = PointBackbone(cfg.model)
    model = build_task_model(cfg, backbone, train_set.shapes)
    if cfg.init_head:
        continue_head(model, cfg, train_set.shapes)
    task = SupervisedTask(cfg, test_set, segmentation_class_weights(cfg, train_set.shapes),
                          gated=backbone.budget_adjustable, train_set=train_set)
    trainer = Trainer(cfg.run, cfg.optim, model, task, train_set, stage=f"finetune_{cfg.task}", config=to_dict(cfg))
    history = trainer.fit(resume=resume)
    final = {k: v for k, v in history[-1].items() if k.startswith("test_")}
    if trainer.info.is_main:
        meta = {"task": cfg.task, "classes": train_set.shapes.classes, "seg_classes": train_set.shapes.seg_classes,
                "init": cfg.init, "metrics": final, "head": head_options(cfg),
                "operating_points": [to_dict(op) for op in cfg.operating_points]}
        if cfg.bn_per_operating_point:
            model.batchnorm_bank = task.batchnorm_bank(model, len(history))
        path = save_task_model(out / "model.safetensors", model.cpu(), backbone.cfg, meta)
        print(f"[finetune] {cfg.task} model exported to {path}; " +
              " ".join(f"{k}={v:.2f}" for k, v in final.items()), flush=True)
    return {"history": history, "final": final, "out_dir": str(out)}


def run_batchnorm_bank(model_path: str | Path, cfg: FinetuneConfig, out: str | Path,
                       only: list[str] | None = None) -> Path:
    """An exported task model plus BatchNorm statistics of each of cfg's operating points, recomputed
    on that point's batches of cfg's training data (models/batchnorm_bank.py), written to `out` with
    cfg's operating points as its list. only: recompute just these points (e.g. one added to the
    range) and keep the model's own statistics for the others."""
    if not cfg.operating_points:
        raise ConfigError("batchnorm-bank needs a config with operating_points")
    names = [op.name for op in cfg.operating_points]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"batchnorm-bank --points {unknown}: not among the config's operating points {names}")
    model, meta = load_task_model(model_path)
    kept = getattr(model, "batchnorm_bank", None)
    missing = [n for n in names if only and n not in only and (kept is None or n not in kept)]
    if missing:                               # before the training data is built
        raise ConfigError(f"operating points {missing}: no BatchNorm statistics to keep (the model has "
                          f"{[] if kept is None else kept.points}); recompute them too (--points)")
    model = model.float()
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    task = SupervisedTask(cfg, test_set, gated=model.backbone.budget_adjustable, train_set=train_set)
    model.batchnorm_bank = task.batchnorm_bank(model, 0, only=only, keep=kept)
    keep = {k: v for k, v in meta.items() if k not in ("kind", "model", "batchnorm_bank", "operating_points")}
    keep["operating_points"] = [to_dict(op) for op in cfg.operating_points]
    path = save_task_model(out, model, model.backbone.cfg, keep)
    print(f"[batchnorm-bank] {path}: statistics for {model.batchnorm_bank.points}"
          + (f" (recomputed: {only})" if only else ""), flush=True)
    return path
