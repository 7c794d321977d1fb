"""Stage `distill`: Foundation Model Distillation (FMD) of a frozen teacher into a Foundry student.

The student reconstructs the teacher's output tokens Y from the same augmented input and the same
token groups: loss = SmoothL1(Y_hat, Y) (or MSE) - lambda * sum(pi) with the gate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, to_dict
from ..configs import DistillConfig
from ..data.sources import make_datasets
from ..models.backbone import PointBackbone
from ..models.io import load_backbone, save_student
from ..models.student import FoundryStudent, StudentOutput
from ..train.probe import linear_probe
from ..train.trainer import Trainer
from .common import decay_groups, eval_view, prepare_run_dir


class Distiller(nn.Module):
    """teacher (frozen, eval) + student; forward(points (B, N, C)) -> (loss, distill_loss, student output)."""

    def __init__(self, teacher: PointBackbone, student: FoundryStudent, loss: str = "smooth_l1"):
        super().__init__()
        self.teacher, self.student, self.loss = teacher, student, loss
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_tokens(self, tok) -> torch.Tensor:
        """Teacher output Y (B, c, D) on the student's groups (teacher tokenizer weights)."""
        t = self.teacher.tokenizer.encoder(tok.groups)
        return self.teacher.encoder(t, self.teacher.tokenizer.pos_embed(tok.centers)).last

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, StudentOutput]:
        tok = self.student.tokenizer(points)
        y = self.teacher_tokens(tok)
        out = self.student.encode(tok, points=points)   # students that regroup use the raw cloud
        if self.loss == "mse":
            rec = F.mse_loss(out.last, y)
        else:
            rec = F.smooth_l1_loss(out.last, y)
        return rec + out.gate_loss, rec, out


class DistillTask:
    """Trainer plug-in: reconstruction loss (+ gate regulariser), student probe as evaluation."""

    def __init__(self, cfg: DistillConfig, probe_train, probe_test):
        self.cfg, self.probe_train, self.probe_test = cfg, probe_train, probe_test

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, rec, out = net(batch["points"])
        metrics = {"distill_loss": rec.item(), "tokens_in_encoder": out.tokens_in_encoder.float().mean().item()}
        if out.gate_probs is not None:
            metrics["gate_merge_frac"] = out.merged.float().mean().item()
        return loss, metrics

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, model: Distiller, epoch: int) -> dict[str, float]:
        device = next(model.student.parameters()).device
        model.eval()
        losses = []
        for i in range(0, min(len(self.probe_test), 256), 32):
            pts = torch.stack([self.probe_test[j]["points"] for j in range(i, min(i + 32, len(self.probe_test)))])
            losses.append(model(pts.to(device))[1].item())
        stats = {"val_distill_loss": sum(losses) / len(losses)}
        if self.probe_train.num_classes < 2:      # scene sets: nothing to classify
            return stats
        return {**stats, "probe_acc": linear_probe(model.student, self.probe_train, self.probe_test,
                                                   self.cfg.probe, device)}

    def param_groups(self, model: Distiller) -> list[dict]:
        return decay_groups(model.student)


def build_student(cfg: DistillConfig, teacher: PointBackbone, train_set=None) -> nn.Module:
    """The Foundry student, or a token-reduction baseline (same interface) when student.kind says so."""
    sc = cfg.student
    if sc.kind == "foundry":
        student = FoundryStudent.from_teacher(
            teacher, sc.supertokens, sc.model, gate=sc.gate, freeze_tokenizer=sc.freeze_tokenizer,
            qkv_bias=sc.qkv_bias, tau=sc.tau, hard=sc.hard, cau_out_norm=sc.cau_out_norm,
            gate_reg_weight=sc.gate_lambda)
        return student.freeze_encoder(sc.frozen_student)
    from ..models.baselines import BASELINES
    size = {"random": "num_keep", "fewer_centers": "num_centers", "tome": "target_tokens",
            "kmeans": "num_prototypes"}[sc.kind]
    student = BASELINES[sc.kind].from_teacher(teacher, student_cfg=sc.model, freeze_tokenizer=sc.freeze_tokenizer,
                                              **{size: sc.supertokens})
    if sc.kind == "kmeans":
        if train_set is None:
            raise ValueError("K-Means prototypes need the training set to fit on")
        student.fit(None, eval_view(train_set))
    return student.freeze_encoder(sc.frozen_student)


def run_distill(cfg: DistillConfig, resume: bool = False) -> dict:
    """Distill, then export the student to <out_dir>/student.safetensors (a drop-in backbone)."""
    if not cfg.teacher:
        raise ConfigError("distill needs a teacher checkpoint (--teacher or teacher: in the config)")
    out = prepare_run_dir(cfg.run.out_dir, cfg)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    teacher = load_backbone(cfg.teacher)
    if isinstance(teacher, FoundryStudent):
        raise ValueError(f"{cfg.teacher} is a distilled student; distill from a teacher backbone")
    model = Distiller(teacher, build_student(cfg, teacher, train_set), cfg.loss)
    task = DistillTask(cfg, eval_view(train_set), test_set)
    trainer = Trainer(cfg.run, cfg.optim, model, task, train_set, stage="distill", config=to_dict(cfg))
    history = trainer.fit(resume=resume)
    result = {"history": history, "out_dir": str(out)}
    if trainer.info.is_main:
        path = save_student(out / "student.safetensors", model.student.cpu(),
                            {"stage": "distill", "teacher": cfg.teacher, "metrics": history[-1]})
        result["student"] = str(path)
        print(f"[distill] {cfg.student.kind} student (s={cfg.student.supertokens}, gate={cfg.student.gate}) "
              f"exported to {path}",
              flush=True)
    return result
