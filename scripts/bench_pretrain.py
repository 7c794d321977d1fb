"""Pre-training throughput (samples/s) of a config on this machine: the training step only.

Runs the stage's own step (PretrainTask.step: forward, bf16 autocast when jepa.cpu_bf16), backward,
gradient clipping, AdamW and the EMA update on real batches of the config's training split, and
reports clouds per second after warm-up steps. No probe, no checkpoint.
Usage: python scripts/bench_pretrain.py --config config/pretrain_trials_infomr.yaml [--set jepa.cpu_bf16=true]
           [--steps 8] [--output docs/results/pretrain_trials/bench.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from foundry_core.configs import PretrainConfig
from foundry_core.data.sources import make_datasets
from foundry_core.stages.common import decay_groups
from foundry_core.stages.pretrain import PretrainTask, build_pretrain_model
from foundry_core.typed_yaml import load_config, to_dict


def measure(cfg: PretrainConfig, steps: int, warmup: int = 2) -> dict:
    """Samples/s of `steps` timed training steps (after `warmup` untimed ones) at cfg."""
    train, _ = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    model = build_pretrain_model(cfg)
    task = PretrainTask(cfg, train, train)
    opt = torch.optim.AdamW(decay_groups(model), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loader = DataLoader(train, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.run.seed))
    model.train()
    times, cpu, it = [], [], iter(loader)
    for i in range(warmup + steps):
        batch = next(it)
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = task.step(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        task.after_step(model, i + 1, warmup + steps)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    step_s = sorted(times)[len(times) // 2]                    # median: robust to other jobs on the machine
    return {"samples_per_s": cfg.optim.batch_size / step_s, "step_s": step_s, "step_s_all": times,
            "samples_per_cpu_s": cfg.optim.batch_size * len(cpu) / sum(cpu), "steps": steps,
            "batch_size": cfg.optim.batch_size, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/pretrain_trials_infomr.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--output", default="", help="write the result (JSON) here as well")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    res = {"command": "python " + " ".join(sys.argv), **measure(cfg, args.steps), "config": to_dict(cfg)}
    print(json.dumps({k: v for k, v in res.items() if k != "config"}, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
