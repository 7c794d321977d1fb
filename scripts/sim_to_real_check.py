"""Sim-to-real robustness of scene models, side by side (issue 12): what a real sensor does that the
simulator's level 32-beam LiDAR over a flat floor does not.

For every model and operating point (torch backend, the config's scene preprocessing, one process):

* held-out simulated sweeps (the model card's scenes) as captured, and under perturbations the
  training never used in this form: the whole sweep tilted by 3 degrees (sensor pitch, slopes), a
  15 cm ground undulation, a random height step of sigma 3 cm per beam (beam calibration), 3 cm
  range noise; mIoU and ground IoU;
* the same scenes captured by a 64-beam car-roof LiDAR (1.73 m, +2 / -24.8 degrees);
* real LiDAR sweeps (../shared/data/scans/kitti_*.bin when present; they have no labels):
  metrics.ground_consistency, the % of near low points labelled ground and of near high points not.

    .venv/bin/python scripts/sim_to_real_check.py \
        --model v7=foundry_core/weights/default_sceneseg.safetensors \
        --model robust=runs/default_model/sceneseg_robust/model.safetensors \
        --out docs/results/sim_to_real.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from foundry_core.configs import FinetuneConfig
from foundry_core.geometry import rotation_about_vector
from foundry_core.metrics import confusion, ground_consistency
from foundry_core.runtime.predictor import Predictor, PredictorConfig
from foundry_core.sim import LidarConfig
from foundry_core.stages.model_card import heldout_sweeps, scene_preprocess
from foundry_core.typed_yaml import load_config

REAL_SCANS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scans"
CAR_ROOF_LIDAR = LidarConfig(beams=64, fov_up_deg=2.0, fov_down_deg=-24.8, mount_height=1.73, azimuth_samples=2000)


def tilt(xyz: np.ndarray, rng: np.random.Generator, deg: float = 3.0) -> np.ndarray:
    """Rotate by `deg` about a random horizontal axis."""
    h = rng.uniform(0, 2 * np.pi)
    R = rotation_about_vector(np.array([np.cos(h), np.sin(h), 0.0]), np.radians(deg))
    return (xyz @ R.T).astype(np.float32)


def undulate(xyz: np.ndarray, rng: np.random.Generator, amp: float = 0.15) -> np.ndarray:
    """z += amp * sin(x / 3 + phase) * cos(y / 4 + phase')."""
    ph = rng.uniform(0, 2 * np.pi, 2)
    out = xyz.copy()
    out[:, 2] += (amp * np.sin(xyz[:, 0] / 3.0 + ph[0]) * np.cos(xyz[:, 1] / 4.0 + ph[1])).astype(np.float32)
    return out


def beam_steps(xyz: np.ndarray, rng: np.random.Generator, sigma: float = 0.03) -> np.ndarray:
    """One N(0, sigma) height offset per beam (beams told apart by elevation, 0.4 degree bins)."""
    el = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    beam = np.round((el - el.min()) / 0.4).astype(np.int64)
    out = xyz.copy()
    out[:, 2] += rng.normal(0, sigma, beam.max() + 1).astype(np.float32)[beam]
    return out


def range_noise(xyz: np.ndarray, rng: np.random.Generator, sigma: float = 0.03) -> np.ndarray:
    d = np.linalg.norm(xyz, axis=1, keepdims=True)
    return (xyz * (1 + rng.normal(0, sigma, (len(xyz), 1)) / np.maximum(d, 1e-6))).astype(np.float32)


PERTURBATIONS = {"as captured": None, "tilt 3 deg": tilt, "undulation 15 cm": undulate,
                 "beam steps 3 cm": beam_steps, "range noise 3 cm": range_noise}


def sim_rows(pred: Predictor, sweeps, op: str, perturb, num_classes: int) -> dict:
    conf = np.zeros((num_classes, num_classes), np.int64)
    for i, (pts, lab) in enumerate(sweeps):
        xyz = pts[:, :3] if perturb is None else perturb(pts[:, :3].copy(), np.random.default_rng(1000 + i))
        conf += confusion(pred(xyz, operating_point=op).labels.astype(np.int64), lab.astype(np.int64), num_classes)
    iou = 100 * np.diag(conf) / np.maximum(1, conf.sum(0) + conf.sum(1) - np.diag(conf))
    return {"miou": float(iou.mean()), "ground_iou": float(iou[0])}


def real_rows(pred: Predictor, scans: list[Path], op: str, ground: int) -> dict:
    road, high = [], []
    for f in scans:
        pts = np.fromfile(f, np.float32).reshape(-1, 4)[:, :3]
        r, h = ground_consistency(pts, pred(pts, operating_point=op).labels, ground)
        road.append(r)
        high.append(h)
    return {"road_labelled_ground": float(np.mean(road)), "high_not_ground": float(np.mean(high)),
            "road_labelled_ground_per_scan": road}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(result["models"])
    panels = [(p, "ground_iou", f"sim, {p}: ground IoU %") for p in PERTURBATIONS] + \
             [("car-roof 64-beam LiDAR", "miou", "sim, 64-beam LiDAR: mIoU %")]
    if result["real_scans"]:
        panels.append(("real sweeps", "road_labelled_ground", "real sweeps: road labelled ground %"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharey=True)
    for ax, (key, metric, title) in zip(axes, panels):
        for m in models:
            rows = result["models"][m]
            ops = list(rows)
            ax.plot(range(len(ops)), [rows[o][key][metric] for o in ops], "o-", label=m)
            ax.set_xticks(range(len(ops)), ops, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="name=path (repeat)")
    ap.add_argument("--config", default="config/default_model/sceneseg_multiscale.yaml")
    ap.add_argument("--sweeps", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = load_config(FinetuneConfig, args.config)
    t0 = time.time()
    sim = heldout_sweeps(cfg, args.sweeps)
    roof = heldout_sweeps(cfg, args.sweeps, lidar=CAR_ROOF_LIDAR)
    scans = sorted(REAL_SCANS.glob("kitti_*.bin")) if REAL_SCANS.is_dir() else []
    result = {"heldout_sweeps": args.sweeps, "config": args.config, "real_scans": [f.name for f in scans],
              "backend": "torch-cpu", "models": {}}
    for spec in args.model:
        name, path = spec.split("=", 1)
        pred = Predictor.from_checkpoint(path, PredictorConfig(preprocess=scene_preprocess(cfg), backend="torch"))
        nc = len(pred.label_info())
        ground = [li.name for li in pred.label_info()].index("ground")
        rows = {}
        for op in [o.name for o in pred.operating_points]:
            row = {p: sim_rows(pred, sim, op, f, nc) for p, f in PERTURBATIONS.items()}
            row["car-roof 64-beam LiDAR"] = sim_rows(pred, roof, op, None, nc)
            if scans:
                row["real sweeps"] = real_rows(pred, scans, op, ground)
            rows[op] = row
            print(f"[sim-to-real] {name} {op}: " + ", ".join(
                f"{k} {v.get('ground_iou', v.get('road_labelled_ground')):.1f}" for k, v in row.items()) +
                f"  ({time.time() - t0:.0f} s)", flush=True)
        result["models"][name] = rows
        result.setdefault("paths", {})[name] = path
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"[sim-to-real] wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
