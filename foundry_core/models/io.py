"""Save and load exported models (backbones and backbone + head) as safetensors + config metadata."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, from_dict, to_dict
from ..configs import ModelConfig
from ..train.checkpoint import CheckpointError, add_prefix, load_checkpoint, load_state_strict, save_checkpoint, split_prefix
from .backbone import PointBackbone


def save_backbone(path: str | Path, backbone: PointBackbone, extra_meta: dict | None = None) -> Path:
    """Export a backbone's weights with its ModelConfig so it can be rebuilt anywhere."""
    meta = {"kind": "backbone", "model": to_dict(backbone.cfg), **(extra_meta or {})}
    return save_checkpoint(path, add_prefix(backbone.state_dict(), "backbone"), meta)


def model_config_of(meta: dict, path: str | Path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, meta["model"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: metadata has no valid model config ({e})") from None


def student_meta(student: nn.Module) -> dict:
    """What rebuilds a distilled student or baseline: tokenizer geometry, constructor args, kind."""
    tok = student.tokenizer
    return {"tokenizer": {"dim": tok.dim, "num_groups": tok.num_groups, "group_size": tok.group_size,
                          "in_channels": tok.in_channels},
            "student": dict(student.init_kwargs), "baseline": getattr(student, "kind", None)}


def save_student(path: str | Path, student: nn.Module, extra_meta: dict | None = None) -> Path:
    """Export a distilled Foundry student (tokenizer, DSO, encoder, CAU, gate) or a token-reduction
    baseline with what rebuilds it."""
    meta = {"kind": "student", "model": to_dict(student.cfg), **student_meta(student), **(extra_meta or {})}
    return save_checkpoint(path, add_prefix(student.state_dict(), "backbone"), meta)


def build_backbone(meta: dict, path: str | Path) -> nn.Module:
    """An empty backbone (PointBackbone or FoundryStudent) matching a checkpoint's metadata."""
    cfg = model_config_of(meta, path)
    if meta.get("kind") != "student" and "student" not in meta:
        return PointBackbone(cfg)
    from .encoder import TransformerEncoder
    from .backbone import encoder_kwargs
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


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the backbone of an exported backbone, distilled student or task model checkpoint."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") not in ("backbone", "student", "task_model"):
        raise CheckpointError(f"{path} holds a {meta.get('kind') or meta.get('stage')!r} checkpoint, not a backbone; "
                              "use the exported backbone.safetensors / student.safetensors of a run")
    backbone = build_backbone(meta, path)
    load_state_strict(backbone, split_prefix(tensors, "backbone"), f"backbone in {path}")
    return backbone.to(device)


def save_task_model(path: str | Path, model: nn.Module, cfg: ModelConfig, task_meta: dict) -> Path:
    """Export backbone + head (TaskModel) with the model config and the task description
    (a student backbone also records what rebuilds it)."""
    meta = {"kind": "task_model", "model": to_dict(cfg), **task_meta}
    if hasattr(model.backbone, "init_kwargs"):
        meta.update(student_meta(model.backbone))
    return save_checkpoint(path, dict(model.state_dict()), meta)
