"""Save and load exported models (backbones and backbone + head) as safetensors + config metadata."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from ..checkpoint import CheckpointError, add_prefix, load_checkpoint, load_state_strict, save_checkpoint, split_prefix
from ..configs import FinetuneConfig, ModelConfig
from ..typed_yaml import ConfigError, from_dict, to_dict
from .backbone import Backbone, PointBackbone
from .batchnorm_bank import BatchNormBank
from .build import build_task_model
from .heads import TaskModel


def save_backbone(path: str | Path, backbone: PointBackbone, extra_meta: dict | None = None) -> Path:
    """Export a backbone's weights with its ModelConfig so it can be rebuilt anywhere."""
    meta = {"kind": "backbone", "model": to_dict(backbone.cfg), **(extra_meta or {})}
    return save_checkpoint(path, add_prefix(backbone.state_dict(), "backbone"), meta)


def model_config_of(meta: dict, path: str | Path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, meta["model"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: metadata has no valid model config ({e})") from None


def save_student(path: str | Path, student: Backbone, extra_meta: dict | None = None) -> Path:
    """Export a distilled Foundry student (tokenizer, DSO, encoder, CAU, gate) or a token-reduction
    baseline with what rebuilds it."""
    meta = {"kind": "student", "model": to_dict(student.cfg), **student.rebuild_meta(), **(extra_meta or {})}
    return save_checkpoint(path, add_prefix(student.state_dict(), "backbone"), meta)


def build_backbone(meta: dict, path: str | Path) -> Backbone:
    """An empty backbone (PointBackbone or FoundryStudent) matching a checkpoint's metadata."""
    cfg = model_config_of(meta, path)
    if meta.get("kind") != "student" and "student" not in meta:
        return PointBackbone(cfg)
    from .backbone import encoder_kwargs
    from .encoder import TransformerEncoder
    from .student import FoundryStudent
    from .tokenizer import PointTokenizer
    try:
        tok = PointTokenizer(**meta["tokenizer"])
        encoder = TransformerEncoder(**encoder_kwargs(cfg))
        if meta.get("baseline"):
            from .baselines import build_baseline
            return build_baseline(meta["baseline"], tok, encoder, cfg=cfg, **meta["student"])
        return FoundryStudent(tok, encoder, **meta["student"], cfg=cfg)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: student metadata incomplete ({e})") from None


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """Rebuild the backbone of an exported backbone, distilled student or task model checkpoint."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") not in ("backbone", "student", "task_model"):
        raise CheckpointError(f"{path} holds a {meta.get('kind') or meta.get('stage')!r} checkpoint, not a backbone; "
                              "use the exported backbone.safetensors / student.safetensors of a run")
    backbone = build_backbone(meta, path)
    load_state_strict(backbone, split_prefix(tensors, "backbone"), f"backbone in {path}")
    return backbone.to(device)


def save_task_model(path: str | Path, model: TaskModel, cfg: ModelConfig, task_meta: dict) -> Path:
    """Export backbone + head (TaskModel) with the model config and the task description
    (a student backbone also records what rebuilds it; a model with a BatchNormBank carries it)."""
    meta = {"kind": "task_model", "model": to_dict(cfg), **task_meta, **model.backbone.rebuild_meta()}
    tensors = dict(model.state_dict())
    bank: BatchNormBank | None = getattr(model, "batchnorm_bank", None)
    if bank is not None and bank.points:
        meta["batchnorm_bank"] = bank.points
        tensors.update(bank.to_tensors())
    return save_checkpoint(path, tensors, meta)


def load_task_model(path: str | Path) -> tuple[TaskModel, dict]:
    """(TaskModel in eval mode, metadata) of an exported task model; mirrors run_evaluate without a dataset."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "task_model":
        raise CheckpointError(f"{path} is not an exported task model (kind {meta.get('kind')!r}); "
                              "the predictor needs the model.safetensors of a fine-tuning run")
    task = meta.get("task")
    if task not in ("cls", "partseg", "sceneseg"):
        raise CheckpointError(f"{path}: unknown task {task!r}")
    classes = list(meta.get("classes") or [])
    seg_classes = meta.get("seg_classes")
    if task != "cls" and not seg_classes:
        raise CheckpointError(f"{path}: a {task} model without seg_classes in its metadata")
    cfg = from_dict(FinetuneConfig, {"task": task, **meta.get("head", {})})
    cfg.model = model_config_of(meta, path)
    shapes = SimpleNamespace(name=str(path), classes=classes, num_classes=len(classes), seg_classes=seg_classes)
    model = build_task_model(cfg, build_backbone(meta, path), shapes)
    try:
        tensors, model.batchnorm_bank = BatchNormBank.split(tensors, list(meta.get("batchnorm_bank") or []))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"task model {path}: BatchNorm bank incomplete ({e})") from None
    load_state_strict(model, tensors, f"task model {path}")
    return model.eval(), meta
