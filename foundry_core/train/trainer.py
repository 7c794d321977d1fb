"""The one training loop every stage uses (pre-training, fine-tuning, later distillation).

Device auto-selection, AMP on CUDA, gradient clipping, seeds, progress bar, metrics to CSV/JSON
plus a plot, atomic safetensors checkpoints with bit-for-bit resume, and torchrun/DDP.
"""
from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..checkpoint import (CheckpointError, add_prefix, load_checkpoint, load_state_strict, remove_stale_temp_files,
                          save_checkpoint, split_prefix)
from ..configs import OptimConfig, RunConfig
from .distributed import DistInfo, barrier, init_distributed, resolve_device


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN / Inf loss: the run stops and nothing is exported."""


class Task(Protocol):
    """What a stage plugs into the trainer."""

    def step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (net may be DDP-wrapped: call it, never its submodules)."""

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (e.g. EMA update)."""

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Periodic quality check on the main process."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups; each may carry 'lr_scale' and 'frozen_epochs'."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, cfg: OptimConfig) -> float:
    """Linear warm-up then cosine decay to min_lr (per optimizer step)."""
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """fit() trains `model` on `train_set` with `task`, writing everything under run.out_dir."""

    CKPT = "last.safetensors"

    def __init__(self, run: RunConfig, optim: OptimConfig, model: nn.Module, task: Task,
                 train_set: Dataset, stage: str, config: dict):
        self.run, self.optim_cfg, self.model, self.task = run, optim, model, task
        self.train_set, self.stage, self.config = train_set, stage, config
        self.out = Path(run.out_dir)
        self.info: DistInfo = DistInfo()
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        set_seed(self.run.seed)
        self.device = resolve_device(self.run.device)
        self.info = init_distributed(self.device)
        self.model.to(self.device)
        self.net: nn.Module = self.model
        if self.info.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        groups = self.task.param_groups(self.model)
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            g.setdefault("frozen_epochs", 0)
        self.optimizer = torch.optim.AdamW(groups, lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.info.world_size, rank=self.info.rank,
                                          shuffle=True, seed=self.run.seed)
        per_rank = math.ceil(len(self.train_set) / self.info.world_size)
        self.loader = DataLoader(self.train_set, batch_size=self.optim_cfg.batch_size, sampler=self.sampler,
                                 num_workers=self.run.num_workers, drop_last=per_rank > self.optim_cfg.batch_size)
        if len(self.loader) == 0:
            raise ValueError(f"training set of {len(self.train_set)} clouds gives no batch")
        self.amp = self.run.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.optim_cfg.epochs * self.steps_per_epoch
        self.warmup_steps = self.optim_cfg.warmup_epochs * self.steps_per_epoch

    # ------------------------------------------------------------- checkpoint
    def _checkpoint_state(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = add_prefix(self.model.state_dict(), "model")
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for name, val in st.items():
                tensors[f"optim.{pid}.{name}"] = val if torch.is_tensor(val) else torch.tensor(val)
        tensors["rng.torch"] = torch.get_rng_state()
        np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        tensors["rng.numpy_key"] = torch.from_numpy(np_key.astype(np.int64))
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        meta = {
            "stage": self.stage, "config": self.config, "epoch": epoch, "step": (epoch + 1) * self.steps_per_epoch,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
            "rng_numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)], "rng_python": random.getstate(),
            "scaler": self.scaler.state_dict(), "history": self.history, "world_size": self.info.world_size,
        }
        return tensors, meta

    def _resume(self, path: Path) -> int:
        tensors, meta = load_checkpoint(path)
        if meta.get("stage") != self.stage:
            raise CheckpointError(f"{path} is a {meta.get('stage')!r} checkpoint, cannot resume {self.stage!r}")
        load_state_strict(self.model, split_prefix(tensors, "model"), f"checkpoint {path}")
        opt = self.optimizer.state_dict()
        state: dict[int, dict] = {}
        for key, val in split_prefix(tensors, "optim").items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = val.to(self.device) if name != "step" else val
        opt["state"] = state
        for g, saved in zip(opt["param_groups"], meta["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.optimizer.load_state_dict(opt)
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        np_name, np_pos, np_has_gauss, np_gauss = meta["rng_numpy"]
        np.random.set_state((np_name, tensors["rng.numpy_key"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
        py = meta["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.scaler.load_state_dict(meta["scaler"])
        self.history = meta["history"]
        return int(meta["epoch"]) + 1

    # ---------------------------------------------------------------- logging
    def _write_metrics(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "metrics.json").write_text(json.dumps(self.history, indent=2))
        keys = sorted({k for h in self.history for k in h})
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        plot_history(self.history, self.out / "metrics.png", title=f"{self.stage}: {self.out.name}")

    def log(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)

    # ------------------------------------------------------------------- loop
    def fit(self, resume: bool = False, stop_after: int | None = None) -> list[dict[str, float]]:
        """Train to optim.epochs (continuing from the last checkpoint when resume=True).

        stop_after: run at most this many epochs in this call (time-sliced jobs); a later call with
        resume=True continues exactly where it stopped.
        """
        self._setup()
        start_epoch = 0
        ckpt = self.out / self.CKPT
        if self.info.is_main:
            remove_stale_temp_files(ckpt)
        if resume and ckpt.exists():
            start_epoch = self._resume(ckpt)
            self.log(f"[{self.stage}] resumed from {ckpt} at epoch {start_epoch}")
        end_epoch = self.optim_cfg.epochs if stop_after is None else min(self.optim_cfg.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, end_epoch):
            t0 = time.time()
            self.sampler.set_epoch(epoch)
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            train_metrics = self._train_epoch(epoch)
            row = {"epoch": epoch + 1, **train_metrics, "epoch_time_s": time.time() - t0}
            last = epoch + 1 == self.optim_cfg.epochs
            if self.info.is_main and (last or (self.run.eval_every and (epoch + 1) % self.run.eval_every == 0)):
                self.model.eval()
                row.update(self.task.evaluate(self.model, epoch))
            if self.info.is_main:
                self.history.append(row)
                tensors, meta = self._checkpoint_state(epoch)
                save_checkpoint(ckpt, tensors, meta)
                self._write_metrics()
                self.log(f"[{self.stage}] epoch {epoch + 1}/{self.optim_cfg.epochs} " +
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            barrier(self.info)
        return self.history

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        show = self.run.progress and self.info.is_main and sys.stderr.isatty()
        try:
            from tqdm import tqdm
            it = tqdm(self.loader, desc=f"{self.stage} {epoch + 1}/{self.optim_cfg.epochs}", leave=False,
                      disable=not show)
        except ImportError:  # pragma: no cover
            it = self.loader
        for i, batch in enumerate(it):
            step = epoch * self.steps_per_epoch + i
            base = lr_at(step, self.total_steps, self.warmup_steps, self.optim_cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = 0.0 if epoch < g["frozen_epochs"] else base * g["lr_scale"]
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss, metrics = self.task.step(self.net, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"[{self.stage}] non-finite loss {loss.item()} at epoch {epoch + 1} step {i}: training stopped and "
                    f"nothing exported ({self.out / self.CKPT} keeps the last finished epoch, if any); "
                    "lower optim.lr, set optim.grad_clip, or check the initial weights and the data")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.optim_cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.task.after_step(self.model, step + 1, self.total_steps)
            metrics = {"loss": loss.item(), **metrics}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if show and hasattr(it, "set_postfix"):
                it.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{base:.2e}")
        return {f"train_{k}": v / max(1, n) for k, v in sums.items()} | {"lr": base}


def plot_history(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Loss and evaluation curves vs epoch, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    losses = [k for k in history[0] if k.endswith("loss")]
    evals = sorted({k for h in history for k in h if k.startswith(("val_", "probe_", "test_"))})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in losses:
        axes[0].plot(epochs, [h.get(k, np.nan) for h in history], marker=".", label=k)
    axes[0].set_xlabel("epoch"); axes[0].set_ylabel("loss"); axes[0].legend(); axes[0].grid(alpha=.3)
    for k in evals:
        xs = [h["epoch"] for h in history if k in h]
        axes[1].plot(xs, [h[k] for h in history if k in h], marker="o", label=k)
    axes[1].set_xlabel("epoch"); axes[1].set_ylabel("metric"); axes[1].grid(alpha=.3)
    if evals:
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
