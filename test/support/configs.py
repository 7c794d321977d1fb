"""Tiny stage configs that train in seconds on a 2-core CPU."""
from __future__ import annotations

from pathlib import Path

from foundry_core.configs import (DataConfig, DistillConfig, FinetuneConfig, JEPAConfig, ModelConfig, OptimConfig,
                                  PretrainConfig, RunConfig, StudentConfig)


def tiny_model(**kw) -> ModelConfig:
    base = dict(encoder="custom", dim=32, depth=2, heads=2, num_groups=16, group_size=8)
    return ModelConfig(**{**base, **kw})


def tiny_jepa(**kw) -> JEPAConfig:
    return JEPAConfig(**{"predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 2, **kw})


def tiny_data(**kw) -> DataConfig:
    base = dict(source="synthetic", synthetic_shapes=60, num_points=128, augment=["scale", "rotate_up"])
    return DataConfig(**{**base, **kw})


def tiny_pretrain(out: Path, epochs: int = 2, **optim) -> PretrainConfig:
    return PretrainConfig(
        model=tiny_model(), data=tiny_data(),
        optim=OptimConfig(**{"lr": 1e-3, "epochs": epochs, "warmup_epochs": 1, "batch_size": 16, **optim}),
        run=RunConfig(out_dir=str(out), eval_every=0, progress=False),
        jepa=tiny_jepa(ema=[0.99, 0.999]))


def tiny_finetune(out: Path, task: str = "cls", epochs: int = 2, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        task=task, model=tiny_model(), data=tiny_data(with_seg=task != "cls"),
        optim=OptimConfig(lr=1e-3, epochs=epochs, warmup_epochs=0, batch_size=16),
        run=RunConfig(out_dir=str(out), eval_every=0, progress=False), seg_layers=[1, 2], **kw)


def tiny_distill(out: Path, teacher: str, epochs: int = 2, **student) -> DistillConfig:
    return DistillConfig(
        teacher=teacher, student=StudentConfig(**{"supertokens": 4, **student}), data=tiny_data(),
        optim=OptimConfig(lr=1e-3, epochs=epochs, warmup_epochs=0, batch_size=16),
        run=RunConfig(out_dir=str(out), eval_every=0, progress=False))
