"""Stage `pretrain`: Point-JEPA pre-training of a teacher backbone, with a periodic linear probe."""
from __future__ import annotations


import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..typed_yaml import ConfigError, to_dict
from ..configs import PretrainConfig
from ..data.point_dataset import PointCloudDataset
from ..data.sources import make_datasets, pretraining_set
from ..models.backbone import PointBackbone
from ..models.io import save_backbone
from ..models.jepa import PointJEPA
from ..models.mae import PointMAE
from ..train.cpu_bf16 import use_cpu_bf16
from ..train.probe import linear_probe
from ..train.trainer import Trainer
from .common import decay_groups, eval_view, prepare_run_dir


class PretrainTask:
    """Trainer plug-in: JEPA loss, EMA after every step, probe of the EMA target as evaluation."""

    def __init__(self, cfg: PretrainConfig, probe_train: PointCloudDataset, probe_test: PointCloudDataset):
        self.cfg, self.probe_train, self.probe_test = cfg, probe_train, probe_test
        self.momentum = cfg.jepa.ema[0]

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        points = batch["points"]
        bf16 = points.device.type == "cpu" and use_cpu_bf16(self.cfg.jepa.cpu_bf16)
        if not bf16:
            return net(points), {}
        # bf16 on CPU: the math attention kernel (AMX matmuls); the flash kernel's bf16 backward is slow
        with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
            return net(points).float(), {}

    def after_step(self, model: PointJEPA, step: int, total_steps: int) -> None:
        self.momentum = model.update_target(step, total_steps)

    def evaluate(self, model: PointJEPA, epoch: int) -> dict[str, float]:
        """Probe both encoders; probe_acc is the one that will be exported (jepa.export)."""
        device = next(model.parameters()).device
        stats = {"ema_momentum": self.momentum, "target_token_std": self.token_diversity(model.target, device)}
        if self.probe_train.num_classes < 2:      # e.g. scene sets: nothing to classify, diversity only
            return stats
        accs = {name: linear_probe(getattr(model, attr), self.probe_train, self.probe_test, self.cfg.probe, device)
                for name, attr in (("target", "target"), ("online", "backbone"))}
        return {"probe_acc": accs[self.cfg.jepa.export], "probe_acc_target": accs["target"],
                "probe_acc_online": accs["online"], **stats}

    @torch.no_grad()
    def token_diversity(self, backbone: PointBackbone, device) -> float:
        """Mean std across tokens of the LayerNorm'd last hidden state (falls towards 0 on collapse)."""
        n = min(32, len(self.probe_test))
        pts = torch.stack([self.probe_test[i]["points"] for i in range(n)]).to(device)
        backbone.eval()
        h = backbone(pts, generator=torch.Generator().manual_seed(0)).encoded.hidden[-1]
        return float(torch.nn.functional.layer_norm(h, h.shape[-1:]).std(dim=1).mean())

    def param_groups(self, model: PointJEPA) -> list[dict]:
        return decay_groups(model)


def build_pretrain_model(cfg: PretrainConfig) -> PointJEPA | PointMAE:
    """The pre-training model of cfg.jepa.objective around a fresh PointBackbone(cfg.model)."""
    cls = PointMAE if cfg.jepa.objective == "mae" else PointJEPA
    backbone = PointBackbone(cfg.model)
    if cfg.jepa.freeze_pos_embed:              # random features of the centers, kept (and copied to the EMA target)
        backbone.tokenizer.pos_embed.requires_grad_(False)
    blocks = backbone.encoder.blocks
    if cfg.jepa.frozen_blocks > len(blocks):
        raise ConfigError(f"jepa.frozen_blocks {cfg.jepa.frozen_blocks} > the encoder's {len(blocks)} blocks")
    for block in blocks[:cfg.jepa.frozen_blocks]:  # random features kept (the EMA target copies equal weights)
        block.requires_grad_(False)
    return cls(backbone, cfg.jepa)


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict:
    """Pre-train, then export the EMA target (or online, per jepa.export) backbone to
    <out_dir>/backbone.safetensors."""
    out = prepare_run_dir(cfg.run.out_dir, cfg)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    probe_train = eval_view(train_set)
    if cfg.extra_data:
        train_set = pretraining_set(cfg.data, train_set.shapes, cfg.extra_data, cfg.run.seed)
        print(f"[pretrain] {len(train_set)} training clouds ({len(probe_train)} of {cfg.data.source} + extra data)",
              flush=True)
    torch.manual_seed(cfg.run.seed)
    model = build_pretrain_model(cfg)
    task = PretrainTask(cfg, probe_train, test_set)
    trainer = Trainer(cfg.run, cfg.optim, model, task, train_set, stage="pretrain", config=to_dict(cfg))
    history = trainer.fit(resume=resume)
    result = {"history": history, "out_dir": str(out)}
    if trainer.info.is_main:
        exported = model.target if cfg.jepa.export == "target" else model.backbone
        path = save_backbone(out / "backbone.safetensors", exported.cpu(),
                             {"stage": "pretrain", "epochs": cfg.optim.epochs, "encoder_branch": cfg.jepa.export,
                              "probe_acc": history[-1].get("probe_acc")})
        result["backbone"] = str(path)
        probe = history[-1].get("probe_acc") if history else None
        print(f"[pretrain] backbone exported to {path}"
              + (f"; final probe accuracy {probe:.2f}%" if probe is not None else ""), flush=True)
    return result
