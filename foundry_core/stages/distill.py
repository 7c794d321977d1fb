"""Stage `distill`: Foundation Model Distillation (FMD) of a frozen teacher into a Foundry student.

The student reconstructs the teacher's output tokens Y from the same augmented input and the same
token groups: loss = SmoothL1(Y_hat, Y) (or MSE) - lambda * sum(pi) with the gate. A student
tokenizer of its own (student.tokenizer.kind: compact) also learns the teacher tokenizer's tokens on
the same groups: + w * SmoothL1(T_student, T_teacher) (w = student.tokenizer.token_loss_weight), after
student.tokenizer.init_epochs epochs of distilling the tokenizer alone (train/tokenizer_distill.py).

loss: kl makes the specialist of the paper's Table 2 instead: the teacher is a fine-tuned task model
(backbone + head), the student gets a trainable copy of its head, and the loss is
T^2 KL(softmax(teacher logits / T) || softmax(student logits / T)) on that one task (per cloud for
classification, per point for segmentation). It exports the student backbone (student.safetensors,
for transfer to other tasks) and the specialist task model (model.safetensors).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..typed_yaml import ConfigError, to_dict
from ..configs import DistillConfig
from ..data.sources import make_datasets
from ..models.backbone import Backbone, BackboneOutput, PointBackbone
from ..models.heads import TaskModel
from ..models.io import load_backbone, load_task_model, save_student, save_task_model
from ..models.student import StudentOutput
from ..train.probe import linear_probe
from ..train.trainer import Trainer
from .common import decay_groups, eval_view, prepare_run_dir, student_for


class Distiller(nn.Module):
    """teacher (frozen, eval) + student; forward(points (B, N, C), category (B,) | None)
    -> (loss, distillation loss, student output). With a teacher head (loss kl) the student is
    trained on the head's logits through its own trainable copy of the head."""

    def __init__(self, teacher: PointBackbone, student: Backbone, loss: str = "smooth_l1",
                 teacher_head: nn.Module | None = None, temperature: float = 4.0, token_loss_weight: float = 0.0):
        super().__init__()
        self.teacher, self.student, self.loss = teacher, student, loss
        # a student tokenizer of its own also learns the teacher's tokens (token-level loss)
        self.token_loss_weight = float(token_loss_weight) if student.tokenizer.pointnet_spec is not None else 0.0
        self.teacher.requires_grad_(False)
        self.teacher_head = teacher_head
        self.student_head = None
        if loss == "kl":
            if teacher_head is None:
                raise ValueError("loss kl needs the teacher's task head")
            teacher_head.requires_grad_(False)
            self.student_head = copy.deepcopy(teacher_head).requires_grad_(True)
        self.temperature = float(temperature)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    @torch.no_grad()
    def teacher_output(self, tok) -> BackboneOutput:
        """Teacher output on the student's groups (teacher tokenizer weights); .last = Y (B, c, D) and
        .tokens.tokens = the teacher tokenizer's tokens. A frozen copy of the teacher's tokenizer
        gives the teacher's tokens: they are reused."""
        if getattr(self.student, "tokenizer_is_teachers", False):
            return self.teacher.encode(tok)
        t = self.teacher.tokenizer.encoder(tok.groups)
        p = self.teacher.tokenizer.pos_embed(tok.centers)
        return BackboneOutput(tokens=replace(tok, tokens=t, pos=p), encoded=self.teacher.encoder(t, p))

    def forward(self, points: torch.Tensor, category: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, StudentOutput]:
        tok = self.student.tokenizer(points)
        y = self.teacher_output(tok)
        out = self.student.encode(tok, points=points)   # students that regroup use the raw cloud
        if self.loss == "kl":
            temp = self.temperature
            with torch.no_grad():
                t_logits = self.teacher_head(y, points, category)
            s_logits = self.student_head(out, points, category)
            k = s_logits.shape[-1]
            rec = F.kl_div(F.log_softmax(s_logits.reshape(-1, k) / temp, -1),
                           F.log_softmax(t_logits.reshape(-1, k) / temp, -1),
                           log_target=True, reduction="batchmean") * temp * temp
        elif self.loss == "mse":
            rec = F.mse_loss(out.last, y.last)
        else:
            rec = F.smooth_l1_loss(out.last, y.last)
        loss = rec + out.gate_loss
        if self.token_loss_weight > 0:
            self.last_token_loss = F.smooth_l1_loss(tok.tokens, y.tokens.tokens)
            loss = loss + self.token_loss_weight * self.last_token_loss
        return loss, rec, out


class DistillTask:
    """Trainer plug-in: reconstruction loss (+ gate regulariser), student probe as evaluation."""

    def __init__(self, cfg: DistillConfig, probe_train, probe_test):
        self.cfg, self.probe_train, self.probe_test = cfg, probe_train, probe_test

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, rec, out = net(batch["points"], batch.get("category"))
        metrics = {"distill_loss": rec.item(), "tokens_in_encoder": out.tokens_in_encoder.float().mean().item()}
        distiller = getattr(net, "module", net)
        if distiller.token_loss_weight > 0:
            metrics["token_loss"] = distiller.last_token_loss.item()
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
            items = [self.probe_test[j] for j in range(i, min(i + 32, len(self.probe_test)))]
            pts = torch.stack([it["points"] for it in items]).to(device)
            cat = torch.stack([torch.as_tensor(it["category"]) for it in items]).to(device) if "category" in items[0] else None
            losses.append(model(pts, cat)[1].item())
        stats = {"val_distill_loss": sum(losses) / len(losses)}
        if self.probe_train.num_classes < 2 or not self.cfg.eval_probe:   # scene sets: nothing to classify
            return stats
        return {**stats, "probe_acc": linear_probe(model.student, self.probe_train, self.probe_test,
                                                   self.cfg.probe, device)}

    def param_groups(self, model: Distiller) -> list[dict]:
        head = decay_groups(model.student_head) if model.student_head is not None else []
        return decay_groups(model.student) + head


def run_distill(cfg: DistillConfig, resume: bool = False) -> dict:
    """Distill, then export the student to <out_dir>/student.safetensors (a drop-in backbone)."""
    if not cfg.teacher:
        raise ConfigError("distill needs a teacher checkpoint (--teacher or teacher: in the config)")
    out = prepare_run_dir(cfg.run.out_dir, cfg)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    teacher_head, task_meta = None, None
    if cfg.loss == "kl":
        task_model, task_meta = load_task_model(cfg.teacher)
        teacher, teacher_head = task_model.backbone, task_model.head
        if (task_meta["task"] != "cls") != cfg.data.with_seg:
            raise ConfigError(f"loss kl with a {task_meta['task']} teacher needs data.with_seg: "
                              f"{str(task_meta['task'] != 'cls').lower()}")
    else:
        teacher = load_backbone(cfg.teacher)
    if teacher.backbone_kind != "teacher":
        raise ValueError(f"{cfg.teacher} is a distilled student; distill from a teacher backbone")
    student = student_for(cfg.student, teacher, train_set)
    tcfg = cfg.student.tokenizer
    if tcfg.kind != "teacher" and tcfg.init_epochs > 0 and not (resume and (out / Trainer.CKPT).exists()):
        from ..train.tokenizer_distill import InitSource, distill_tokenizer
        extra = [InitSource(f"init_data{i}", make_datasets(d.data, cfg.run.seed)[0], d.num_groups or None, d.repeats)
                 for i, d in enumerate(tcfg.init_data)]          # training splits only
        distill_tokenizer(student.tokenizer, teacher.tokenizer, eval_view(train_set), tcfg.init_epochs,
                          tcfg.init_lr, cfg.optim.batch_size, cfg.run.seed, log_path=out / "tokenizer_init.json",
                          group_scale=tcfg.init_group_scale, extra=extra)
    if tcfg.freeze_after_init:          # the main loop trains the rest on the initialised tokenizer
        student.freeze_tokenizer(True)
    token_loss_weight = 0.0 if tcfg.freeze_after_init else tcfg.token_loss_weight
    model = Distiller(teacher, student, cfg.loss, teacher_head, cfg.temperature, token_loss_weight)
    task = DistillTask(cfg, eval_view(train_set), test_set)
    trainer = Trainer(cfg.run, cfg.optim, model, task, train_set, stage="distill", config=to_dict(cfg))
    history = trainer.fit(resume=resume)
    result = {"history": history, "out_dir": str(out)}
    if trainer.info.is_main:
        path = save_student(out / "student.safetensors", model.student.cpu(),
                            {"stage": "distill", "teacher": cfg.teacher, "metrics": history[-1]})
        result["student"] = str(path)
        if task_meta is not None:                   # the specialist itself, ready for evaluate / predict
            meta = {k: task_meta.get(k) for k in ("task", "classes", "seg_classes", "head")}
            result["model"] = str(save_task_model(out / "model.safetensors",
                                                  TaskModel(model.student, model.student_head).cpu(),
                                                  model.student.cfg, {**meta, "init": cfg.teacher,
                                                                      "metrics": history[-1]}))
        print(f"[distill] {cfg.student.kind} student (s={cfg.student.supertokens}, gate={cfg.student.gate}) "
              f"exported to {path}",
              flush=True)
    return result
