"""Tiny exported task models and clouds for the predictor, export, backend, node and demo tests."""
from __future__ import annotations

import math

import numpy as np
import torch

from foundry_core.configs import ModelConfig
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.heads import ClassificationHead, SegmentationHead, TaskModel
from foundry_core.models.io import save_task_model
from foundry_core.models.student import FoundryStudent
from foundry_core.runtime.preprocess import PreprocessConfig
from foundry_core.typed_yaml import to_dict

SEG_CLASSES = ["ground", "car", "tree", "pole"]
HEAD = {"seg_layers": [1, 2], "category_embedding": True, "head_dropout": 0.5}



def export_task_model(path, kind: str = "student", in_channels: int = 3, task: str = "sceneseg",
                      operating_points: list | None = None, tokenizer_pointnet: dict | None = None,
                      gate: bool = True, point_geometry: bool = False, local_shape_k: int = 0,
                      local_shape_voxels: tuple = (0.0,)) -> str:
    """A tiny task model (kind student = gated Foundry student, teacher, random baseline) saved as
    path/model.safetensors; the head's weights are scaled so labels vary with position.
    operating_points: OperatingPoints (or their dicts) stored in the metadata, as fine-tuning does.
    tokenizer_pointnet: the student's own tokenizer (e.g. {"kind": "compact", ...}); gate: gated student;
    point_geometry / local_shape_k / local_shape_voxels: the segmentation head's per-point geometry
    (offsets, LocalShape and its scales)."""
    torch.manual_seed(0)
    teacher = PointBackbone(ModelConfig(encoder="custom", dim=32, depth=2, heads=2, num_groups=16, group_size=8,
                                        in_channels=in_channels))
    if kind == "student":
        backbone = FoundryStudent.from_teacher(teacher, 4, gate=gate, tokenizer_pointnet=tokenizer_pointnet)
    elif kind == "random":
        from foundry_core.models.baselines import RandomTokenSampling
        backbone = RandomTokenSampling.from_teacher(teacher, 6)
    else:
        backbone = teacher
    if task == "cls":
        head = ClassificationHead(backbone.dim, 3, 0.5)
    else:
        head = SegmentationHead(getattr(backbone, "hidden_dim", backbone.dim), len(SEG_CLASSES), HEAD["seg_layers"],
                                num_categories=3 if task == "partseg" else 0, point_geometry=point_geometry,
                                local_shape_k=local_shape_k, local_shape_voxels=local_shape_voxels)
    with torch.no_grad():   # random but position-dependent labels (several classes per cloud)
        for p in head.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.0 / math.sqrt(p.shape[1]) * 3)
    model = TaskModel(backbone, head)
    meta = {"task": task, "classes": ["a", "b", "c"], "seg_classes": SEG_CLASSES if task != "cls" else None,
            "init": "", "metrics": {},
            "head": {**HEAD, "seg_point_geometry": point_geometry, "seg_local_shape_k": local_shape_k,
                     "seg_local_shape_voxels": list(local_shape_voxels)}}
    if operating_points is not None:
        meta["operating_points"] = [op if isinstance(op, dict) else to_dict(op) for op in operating_points]
    return str(save_task_model(path / "model.safetensors", model, backbone.cfg, meta))


def scene_pre(**kw) -> PreprocessConfig:
    base = dict(min_centers=8, max_centers=32, points_per_center=32, max_points=4096)
    return PreprocessConfig(**{**base, **kw})


def cloud(n: int = 1500, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-4, 4, size=(n, channels)).astype(np.float32)
    pts[:, 2] *= 0.3
    return pts
