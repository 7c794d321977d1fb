"""Does the controller's latency model predict the rich operating points from a frame at the cheap one?
Side by side on the shipped model, in one process: calibration by total call time (before) and by the
stages the point sets (tokenize + encode + head, operating_points.point_cost_ms; the rest counted as
overhead), each against the measured end-to-end time of every point on full simulated sweeps.

    .venv/bin/python scripts/calibration_check.py --out docs/results/calibration_check.json

Prediction from one observed frame at the cheapest point (as the node's controller does):
  total:  load = measured_total(p0) / calib_total(p0);   predicted(i) = load * calib_total(i)
  point:  overhead = measured_total(p0) - measured_point(p0); load = measured_point(p0) / calib_point(p0);
          predicted(i) = overhead + load * calib_point(i)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from foundry_core.configs import FinetuneConfig
from foundry_core.runtime.operating_points import point_cost_ms, sweep_extent, synthetic_sweep
from foundry_core.runtime.predictor import Predictor
from foundry_core.stages.model_card import heldout_sweeps
from foundry_core.typed_yaml import load_config
from foundry_core.weights import DEFAULT_MODEL


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--config", default="config/default_model/sceneseg_multiscale.yaml")
    ap.add_argument("--sweeps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    pred = Predictor.from_checkpoint(args.model)
    sweeps = [pts for pts, _ in heldout_sweeps(load_config(FinetuneConfig, args.config), args.sweeps)]
    ops = pred.operating_points
    calib_point = pred.calibrate(repeats=args.repeats)
    # the same calibration, timed by the total call (the previous rule)
    samples: dict[str, list] = {op.name: [] for op in ops}
    measured: dict[str, dict[str, list]] = {op.name: {"total": [], "point": []} for op in ops}
    synthetic = synthetic_sweep(ops[-1].points, pred.in_channels, sweep_extent(pred.pre_cfg), seed=pred.cfg.seed)
    for _ in range(args.repeats):
        for op in ops:                                    # round-robin, as calibrate()
            samples[op.name].append(pred(synthetic, operating_point=op).report.timings_ms["total"])
    for _ in range(args.repeats):
        for pts in sweeps:
            for op in ops:
                t = pred(pts, operating_point=op).report.timings_ms
                measured[op.name]["total"].append(t["total"])
                measured[op.name]["point"].append(point_cost_ms(t))
    calib_total = {n: float(np.median(v)) for n, v in samples.items()}
    real_total = {n: float(np.median(v["total"])) for n, v in measured.items()}
    real_point = {n: float(np.median(v["point"])) for n, v in measured.items()}
    p0 = ops[0].name
    load_total = real_total[p0] / calib_total[p0]
    overhead = real_total[p0] - real_point[p0]
    load_point = real_point[p0] / calib_point[p0]
    rows = []
    for op in ops:
        n = op.name
        by_total = load_total * calib_total[n]
        by_point = overhead + load_point * calib_point[n]
        rows.append({"name": n, "measured_ms": real_total[n], "predicted_by_total_ms": by_total,
                     "predicted_by_point_ms": by_point, "error_by_total_pct": 100 * (by_total / real_total[n] - 1),
                     "error_by_point_pct": 100 * (by_point / real_total[n] - 1)})
        print(f"[calibration] {n:5s} measured {real_total[n]:6.1f} ms   predicted from {p0}: total rule "
              f"{by_total:6.1f} ({rows[-1]['error_by_total_pct']:+.0f} %)   point rule {by_point:6.1f} "
              f"({rows[-1]['error_by_point_pct']:+.0f} %)", flush=True)
    result = {"model": args.model, "sweeps": len(sweeps), "points_per_sweep": float(np.mean([len(s) for s in sweeps])),
              "calibration_total_ms": calib_total, "calibration_point_ms": calib_point, "observed_point": p0,
              "rows": rows, "elapsed_s": time.time() - t0}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"[calibration] -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
