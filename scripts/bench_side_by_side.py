#!/usr/bin/env python3
"""Node settings side by side (default: abandon_late_frames off vs on) in bench_adaptation's scenarios.

Default scenarios: the dense sweep replay (KITTI HDL-64 scans when ../shared is there, else the dense
simulated LiDAR, 10 Hz, 100 ms deadline) and the deadline step 100 -> 50 ms. Demo runs alternate between
the settings so that the machine's stalls fall on all alike.

    .venv/bin/python scripts/bench_side_by_side.py [--runs 3] [--duration 30] [--scenarios dense_sweep deadline_step]
        -> docs/results/abandon_late_frames.json

--setting NAME=ARGS (repeat, at least two) replaces the off / on pair by any demo arguments, e.g. two
models side by side (``--setting v8="--model v8.safetensors" --setting v9=""``).

Per run: the scenario's fields of adaptation.json, the hit rate after the first 10 frames over the
frames the node processed and over every cloud (a cloud superseded by a newer one, overwritten while
waiting or abandoned late, is a miss), the clouds superseded and the p95 latency; medians per setting.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ("hit_rate_after_10", "hit_rate_after_10_all_frames", "frames", "frames_dropped_stale", "p95_ms",
          "mean_miou")
ABANDON = {"off": ["--param", "abandon_late_frames=false"], "on": ["--param", "abandon_late_frames=true"]}


def parse_settings(items: list[str] | None) -> dict[str, list[str]]:
    """--setting NAME=ARGS items -> {name: demo arguments} (the abandon off / on pair without any)."""
    if not items:
        return ABANDON
    out = {}
    for item in items:
        name, sep, args = item.partition("=")
        if not sep or not name or name in out:
            raise SystemExit(f"--setting {item!r}: expected a new NAME=ARGS")
        out[name] = shlex.split(args)
    if len(out) < 2:
        raise SystemExit("--setting: give at least two settings to compare")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per setting (alternating)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--work", default=str(ROOT / "runs/bench_side_by_side"))
    ap.add_argument("--out", default=str(ROOT / "docs/results/abandon_late_frames.json"))
    ap.add_argument("--scenarios", nargs="+", default=["dense_sweep", "deadline_step"],
                    help="keys of bench_adaptation's SCHEMA")
    ap.add_argument("--setting", action="append", metavar="NAME=ARGS",
                    help="a setting to compare (repeat; default: abandon_late_frames off / on)")
    args = ap.parse_args()
    settings = parse_settings(args.setting)
    from foundry_core.stages.common import write_json
    from foundry_ros.bench_adaptation import SCHEMA, dense_source, run_demo
    from foundry_ros.scenarios import median_or_none

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense_args, words = dense_source("auto", work)
    result: dict = {"dense_source": words, "duration_s": args.duration,
                    "settings": {k: shlex.join(v) for k, v in settings.items()}, "scenarios": {}}
    t0 = time.monotonic()
    for key in args.scenarios:
        demo_scenario, schema_fields = SCHEMA[key]
        fields = tuple(dict.fromkeys(schema_fields + COMMON))
        runs: dict[str, list[dict]] = {name: [] for name in settings}
        for k in range(args.runs):
            for setting, extra in settings.items():
                print(f"[side-by-side] {key} run {k + 1}/{args.runs}, {setting} "
                      f"[{(time.monotonic() - t0) / 60:.1f} min]", flush=True)
                summary = run_demo(["--scenario", demo_scenario, "--duration", str(args.duration),
                                    *(dense_args if key == "dense_sweep" else []), *extra],
                                   work / key / setting / f"run{k + 1}", timeout_s=args.duration + 600)
                if summary is not None:
                    row = {f: summary.get("mean_points_in" if f == "points" else f) for f in fields}
                    runs[setting].append(row)
                    print(f"[side-by-side] {key} {setting}: " + ", ".join(f"{f} {v}" for f, v in row.items()), flush=True)
        result["scenarios"][key] = {
            "runs": runs, "median": {s: {f: median_or_none([r[f] for r in rs]) for f in fields}
                                     for s, rs in runs.items()}}
        write_json(args.out, result)
        print(f"[side-by-side] {key}: {result['scenarios'][key]['median']}", flush=True)
    print(f"[side-by-side] -> {args.out}", flush=True)
    return 0 if all(all(v["runs"].values()) for v in result["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
