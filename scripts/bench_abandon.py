#!/usr/bin/env python3
"""abandon_late_frames off vs on, side by side: the dense sweep replay of bench_adaptation (KITTI HDL-64
scans when ../shared is there, else the dense simulated LiDAR, 10 Hz, 100 ms deadline), demo runs
alternating off / on so that the machine's stalls fall on both alike.

    .venv/bin/python scripts/bench_abandon.py [--runs 3] [--duration 30]
        -> docs/results/abandon_late_frames.json

Per run: the hit rate after the first 10 frames over the frames the node processed, and over every
cloud (a cloud superseded by a newer one, overwritten while waiting or abandoned late, is a miss),
the clouds superseded, and the p95 latency; medians per setting.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIELDS = ("hit_rate_after_10", "hit_rate_after_10_all_frames", "frames", "frames_dropped_stale", "p95_ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per setting (alternating)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_abandon"))
    ap.add_argument("--out", default=str(ROOT / "docs/results/abandon_late_frames.json"))
    args = ap.parse_args()
    from foundry_core.stages.common import write_json
    from foundry_ros.bench_adaptation import dense_source, run_demo
    from foundry_ros.scenarios import median_or_none

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense_args, words = dense_source("auto", work)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    t0 = time.monotonic()
    for k in range(args.runs):
        for setting in ("off", "on"):
            print(f"[abandon] run {k + 1}/{args.runs}, abandon_late_frames {setting} "
                  f"[{(time.monotonic() - t0) / 60:.1f} min]", flush=True)
            value = "true" if setting == "on" else "false"
            summary = run_demo(["--scenario", "steady", "--duration", str(args.duration), *dense_args,
                                "--param", f"abandon_late_frames={value}"],
                               work / setting / f"run{k + 1}", timeout_s=args.duration + 600)
            if summary is not None:
                runs[setting].append({f: summary.get(f) for f in FIELDS})
                print(f"[abandon] {setting}: " + ", ".join(f"{f} {summary.get(f)}" for f in FIELDS), flush=True)
    result = {"source": words, "duration_s": args.duration, "runs": runs,
              "median": {s: {f: median_or_none([r[f] for r in rs]) for f in FIELDS} for s, rs in runs.items()}}
    write_json(args.out, result)
    print(f"[abandon] -> {args.out}: {result['median']}", flush=True)
    return 0 if runs["off"] and runs["on"] else 1


if __name__ == "__main__":
    sys.exit(main())
