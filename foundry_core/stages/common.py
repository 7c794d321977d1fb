"""Pieces shared by the stages: optimizer groups, probe datasets, run directories."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from torch import nn

from ..configs import StudentConfig
from ..data.point_dataset import PointCloudDataset
from ..models.backbone import Backbone, PointBackbone
from ..models.build import build_student
from ..typed_yaml import to_dict


def decay_groups(module: nn.Module, **extra) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings-like 1-D params and tokens."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    groups = [{"params": decay, **extra}, {"params": no_decay, "weight_decay": 0.0, **extra}]
    return [g for g in groups if g["params"]]


def eval_view(ds: PointCloudDataset) -> PointCloudDataset:
    """The same clouds without augmentation and with deterministic resampling (for probes)."""
    return PointCloudDataset(ds.shapes, ds.num_points, None, seed=ds.seed, with_seg=ds.with_seg, train=False)


def student_for(sc: StudentConfig, teacher: PointBackbone, train_set: PointCloudDataset) -> Backbone:
    """models.build.build_student with the training clouds K-Means prototypes are fitted on."""
    return build_student(sc, teacher, eval_view(train_set) if sc.kind == "kmeans" else None)


def prepare_run_dir(out_dir: str | Path, cfg) -> Path:
    """Create the run directory and write the resolved config next to the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path
