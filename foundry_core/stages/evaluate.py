"""Stage `evaluate`: test metrics of an exported task model, or a linear probe of a backbone."""
from __future__ import annotations

import torch

from ..typed_yaml import from_dict
from ..configs import DataConfig, FinetuneConfig, ProbeConfig
from ..data.sources import make_datasets
from ..models.backbone import PointBackbone
from ..models.io import build_backbone, load_backbone, model_config_of
from ..checkpoint import CheckpointError, load_checkpoint, load_state_strict
from ..train.probe import probe_scores
from .common import eval_view
from ..models.build import build_task_model
from .finetune import evaluate_task


def run_evaluate(model_path: str, data: DataConfig, seed: int = 0) -> dict[str, float]:
    """Rebuild an exported task model (model.safetensors of a fine-tuning run) and evaluate it."""
    tensors, meta = load_checkpoint(model_path)
    if meta.get("kind") != "task_model":
        raise CheckpointError(f"{model_path} is not an exported task model (kind {meta.get('kind')!r})")
    train_set, test_set = make_datasets(data, seed)
    cfg = from_dict(FinetuneConfig, {"task": meta["task"], **meta.get("head", {})})
    cfg.model = model_config_of(meta, model_path)
    model = build_task_model(cfg, build_backbone(meta, model_path), train_set.shapes)
    load_state_strict(model, tensors, f"task model {model_path}")
    return evaluate_task(model, test_set, meta["task"], seed=seed)


def run_probe(backbone_path: str | None, data: DataConfig, probe: ProbeConfig, seed: int = 0,
              random_model=None) -> dict[str, float]:
    """Linear-probe accuracies (%) of an exported backbone, or of a randomly initialised one
    ({"fixed": recipe C, "cv": C chosen by cross-validation on the training split, "cv_C"})."""
    train_set, test_set = make_datasets(data, seed)
    if backbone_path:
        backbone = load_backbone(backbone_path)
    else:
        torch.manual_seed(seed)
        backbone = PointBackbone(random_model)
    return probe_scores(backbone, eval_view(train_set), test_set, probe)
