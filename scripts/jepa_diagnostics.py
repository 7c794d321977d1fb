"""Where does a Point-JEPA run's loss come from? Writes docs/results/jepa_diagnostics.json.

For a pre-training checkpoint it measures, on held-out clouds and the same masks:
  * the JEPA loss with the real context, with the context of *another* cloud, and with zero context
    (how much the predictor relies on the cloud vs on the target positions alone);
  * the loss of predicting the dataset-mean target (no information at all);
  * how much of the LayerNorm'd target varies across the tokens of a cloud (collapse indicator),
    for the pre-trained target encoder and for a randomly initialised one.
Usage: python scripts/jepa_diagnostics.py --config config/experiment_shapes69.yaml \
           --checkpoint runs/experiment_infomr/pretrain_s0/last.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from foundry_core.typed_yaml import load_config
from foundry_core.data.sources import make_datasets
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.jepa import PointJEPA, sample_blocks, sequence_centers
from foundry_core.models.sampling import gather_points
from foundry_core.stages.experiment import ExperimentConfig
from foundry_core.checkpoint import load_checkpoint, split_prefix


@torch.no_grad()
def losses(model: PointJEPA, points: torch.Tensor, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    tok = model.backbone.tokenizer(points)
    order = sequence_centers(tok.centers)
    tokens, pos, centers = (gather_points(x, order) for x in (tok.tokens, tok.pos, tok.centers))
    b, c, d = tokens.shape
    targets, context = sample_blocks(c, b, model.cfg)
    t_tok = gather_points(model.target.tokenizer.encoder(tok.groups), order)
    y = F.layer_norm(model.target.encoder(t_tok, model.target.tokenizer.pos_embed(centers)).hidden[-1], (d,))
    ctx = model.backbone.encoder(gather_points(tokens, context), gather_points(pos, context)).last
    m = targets.shape[1]
    flat = targets.reshape(b * m, -1)
    rep = lambda x: x.repeat_interleave(m, 0)  # noqa: E731
    target = gather_points(rep(y), flat)

    def loss(c_: torch.Tensor) -> float:
        pred = model.predictor(rep(c_), rep(gather_points(centers, context)), gather_points(rep(centers), flat))
        return F.smooth_l1_loss(pred, target, beta=model.cfg.loss_beta).item()

    mean_pred = target.mean((0, 1), keepdim=True).expand_as(target)
    return {"loss_real_context": loss(ctx),
            "loss_context_of_other_cloud": loss(ctx[torch.roll(torch.arange(b), 1)]),
            "loss_zero_context": loss(torch.zeros_like(ctx)),
            "loss_predict_dataset_mean": F.smooth_l1_loss(mean_pred, target, beta=model.cfg.loss_beta).item()}


@torch.no_grad()
def token_diversity(backbone: PointBackbone, points: torch.Tensor) -> float:
    backbone.eval()
    h = backbone(points, generator=torch.Generator().manual_seed(0)).encoded.hidden[-1]
    return float(F.layer_norm(h, h.shape[-1:]).std(dim=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/experiment_shapes69.yaml")
    ap.add_argument("--checkpoint", default="runs/experiment_infomr/pretrain_s0/last.safetensors")
    ap.add_argument("--clouds", type=int, default=64)
    ap.add_argument("--output", default="docs/results/jepa_diagnostics.json")
    args = ap.parse_args()
    cfg = load_config(ExperimentConfig, args.config).pretrain
    _, test = make_datasets(cfg.data, cfg.run.seed)
    points = torch.stack([test[i]["points"] for i in range(min(args.clouds, len(test)))])
    tensors, meta = load_checkpoint(args.checkpoint)
    model = PointJEPA(PointBackbone(cfg.model), cfg.jepa)
    model.load_state_dict(split_prefix(tensors, "model"))
    model.eval()
    torch.manual_seed(0)
    out = {"checkpoint": args.checkpoint, "epoch": meta["epoch"] + 1, "clouds": len(points),
           **losses(model, points),
           "token_std_pretrained_target": token_diversity(model.target, points),
           "token_std_random_init": token_diversity(PointBackbone(cfg.model), points),
           "probe_history": [{k: h[k] for k in h if k.startswith("probe") or k == "epoch"}
                             for h in meta["history"] if "probe_acc" in h]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
