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


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> PointBackbone:
    """Rebuild a PointBackbone from an exported backbone or task model checkpoint."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") not in ("backbone", "task_model"):
        raise CheckpointError(f"{path} holds a {meta.get('kind') or meta.get('stage')!r} checkpoint, not a backbone; "
                              "use the exported backbone.safetensors of a pre-training run")
    backbone = PointBackbone(model_config_of(meta, path))
    load_state_strict(backbone, split_prefix(tensors, "backbone"), f"backbone in {path}")
    return backbone.to(device)


def save_task_model(path: str | Path, model: nn.Module, cfg: ModelConfig, task_meta: dict) -> Path:
    """Export backbone + head (TaskModel) with the model config and the task description."""
    meta = {"kind": "task_model", "model": to_dict(cfg), **task_meta}
    return save_checkpoint(path, dict(model.state_dict()), meta)
