"""Where pre-training wins or loses against random init (issue 14): the linear probe of
docs/results/pretrain.json (SVM on standardised max+mean pooled features, C by 3-fold CV on the
training split, scored on the test split) on every stage of the backbone: the tokenizer's tokens
(the mini-PointNet, before any block), the tokens plus the positional embedding, every encoder block's
output, and the final normed output the product uses.

    .venv/bin/python scripts/probe_by_layer.py [--model runs/experiment_infomr/pretrain_s0/backbone.safetensors]
        [--random-seeds 0] [--stages tokens block6 last] [--cv-grid 0.012 0.05 0.2] -> docs/results/pretrain_trials/probe_by_layer.json (+ .png)

The pre-trained backbone defaults to the teacher run of config/distill_tables_infomr.yaml (the recipe
of pretrain.json). This is a diagnosis of the numbers pretrain.json already reports (same split and
protocol); nothing is chosen on it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from foundry_core.data.point_dataset import PointCloudDataset
from foundry_core.data.sources import load_splits
from foundry_core.models.backbone import PointBackbone, pooled_features
from foundry_core.models.io import load_backbone
from foundry_core.stages.distill_tables import DistillTablesConfig
from foundry_core.train.probe import fit_linear_probe, select_C
from foundry_core.typed_yaml import load_config


@torch.no_grad()
def stage_features(backbone: PointBackbone, dataset, batch_size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Pooled features (M, 2D) of every stage -> {"tokens", "tokens+pos", "block1".."blockL", "last"}."""
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    tokz = backbone.tokenizer
    saved = tokz.fps_method, tokz.knn_method
    tokz.fps_method, tokz.knn_method = "fpsample_exact", "kdtree"     # same groups, native kernels
    feats: dict[str, list[np.ndarray]] = {}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out = backbone(batch["points"], generator=gen)
            stages = {"tokens": out.tokens.tokens, "tokens+pos": out.tokens.tokens + out.tokens.pos}
            stages.update({f"block{i + 1}": h for i, h in enumerate(out.encoded.hidden)})
            stages["last"] = out.encoded.last
            for name, x in stages.items():
                feats.setdefault(name, []).append(pooled_features(x).float().numpy())
    finally:
        tokz.fps_method, tokz.knn_method = saved
    return {k: np.concatenate(v) for k, v in feats.items()}


def probe_stages(backbone, train, test, probe_cfg, stages: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Probe accuracies (%) of the stages (all when None): cv, its cv_C, and fixed_C (the recipe's C)."""
    tr, te = stage_features(backbone, train), stage_features(backbone, test)
    ytr, yte = train_labels(train), train_labels(test)
    rows = {}
    for name in (stages or list(tr)):
        C = select_C(tr[name], ytr, probe_cfg)
        rows[name] = {"cv": fit_linear_probe(tr[name], ytr, te[name], yte, probe_cfg, C=C), "cv_C": C,
                      "fixed_C": fit_linear_probe(tr[name], ytr, te[name], yte, probe_cfg)}
        print(f"  {name:>10}: {rows[name]['cv']:.1f} % (C {C:g}), fixed C {rows[name]['fixed_C']:.1f} %", flush=True)
    return rows


def train_labels(dataset) -> np.ndarray:
    return np.asarray(dataset.shapes.labels, dtype=np.int64)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = result["stages"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, rows in result["probe"].items():
        ax.plot(range(len(stages)), [rows[s]["cv"] for s in stages], "o-", label=name)
    ax.set_xticks(range(len(stages)), stages, rotation=30)
    ax.set(ylabel="test probe accuracy (%, C by CV)", title="linear probe per backbone stage: pre-trained vs random init")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/distill_tables_infomr.yaml")
    ap.add_argument("--model", default="", help="pre-trained backbone (default: the config's teacher run)")
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--stages", nargs="+", default=["tokens", "block1", "block6", "last"], help="stages probed (blockN: N-th block)")
    ap.add_argument("--cv-grid", type=float, nargs="+", default=[0.012, 0.05, 0.2],
                    help="Cs the CV chooses from (default: those CV chose in pretrain.json, and the recipe's)")
    ap.add_argument("--output", default="docs/results/pretrain_trials/probe_by_layer.json")
    args = ap.parse_args()
    t0 = time.time()
    cfg = load_config(DistillTablesConfig, args.config).teacher
    model = args.model or str(Path(cfg.run.out_dir) / "backbone.safetensors")
    train_set, test_set = load_splits(cfg.data)
    train = PointCloudDataset(train_set, cfg.data.num_points, None, seed=cfg.run.seed, train=False)
    test = PointCloudDataset(test_set, cfg.data.num_points, None, seed=cfg.run.seed, train=False)
    probe_cfg = cfg.probe                                             # pretrain.json's C
    probe_cfg.cv_grid = list(args.cv_grid)
    backbones = {"pretrained": load_backbone(model)}
    for s in args.random_seeds:
        torch.manual_seed(s)
        backbones[f"random_seed{s}"] = PointBackbone(cfg.model)
    result: dict = {"model": model, "protocol": "linear SVM, standardised max+mean pooled features, C by 3-fold CV "
                    f"on the training split from {probe_cfg.cv_grid}; train {len(train)} / test {len(test)} clouds "
                    "(pretrain.json's split)", "probe": {}}
    for name, backbone in backbones.items():
        print(f"[probe_by_layer] {name}", flush=True)
        result["probe"][name] = probe_stages(backbone, train, test, probe_cfg, args.stages)
    result["stages"] = list(next(iter(result["probe"].values())))
    rnd = [k for k in result["probe"] if k.startswith("random")]
    result["random_mean_cv"] = {s: float(np.mean([result["probe"][k][s]["cv"] for k in rnd])) for s in result["stages"]}
    result["gain_cv"] = {s: result["probe"]["pretrained"][s]["cv"] - result["random_mean_cv"][s] for s in result["stages"]}
    result["wall_time_s"] = time.time() - t0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps(result["gain_cv"], indent=1))


if __name__ == "__main__":
    main()
