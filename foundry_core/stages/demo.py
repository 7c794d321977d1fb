"""Stage `demo`: the embedded default job. Pre-trains a tiny teacher on generated shapes and
compares its linear-probe accuracy with the same encoder randomly initialised."""
from __future__ import annotations

import time

from ..configs import PretrainConfig
from .evaluate import run_probe
from .pretrain import run_pretrain


def run_demo(cfg: PretrainConfig) -> dict:
    t0 = time.time()
    res = run_pretrain(cfg, resume=False)
    pre = run_probe(res["backbone"], cfg.data, cfg.probe, cfg.run.seed)["cv"]
    rnd = run_probe(None, cfg.data, cfg.probe, cfg.run.seed, random_model=cfg.model)["cv"]
    print(f"\n== Foundry demo ({time.time() - t0:.0f} s) ==\n"
          f"  generated shapes: {cfg.data.synthetic_shapes}, encoder {cfg.model.encoder}, "
          f"{cfg.optim.epochs} pre-training epochs\n"
          f"  linear-probe accuracy, pre-trained encoder: {pre:.1f}%\n"
          f"  linear-probe accuracy, random encoder:      {rnd:.1f}%\n"
          f"  run directory (metrics.csv/json, metrics.png, backbone.safetensors): {res['out_dir']}")
    return {"pretrained": pre, "random": rnd}
