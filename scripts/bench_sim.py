#!/usr/bin/env python3
"""Time the simulated sensors: ms per LiDAR sweep (32 / 64 beams x 2048), per 640x480 depth frame and
per raw cast of 100k random rays.  Median over --repeats runs on --scenes scenes, after one warm-up.

    python scripts/bench_sim.py [--repeats 5] [--scenes 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_core.sim import (DepthCamera, LidarConfig, LidarSensor, cast_rays,  # noqa: E402
                              generate_scene)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scenes", type=int, default=3)
    args = ap.parse_args()
    scenes = [generate_scene(s) for s in range(args.scenes)]
    print(f"scenes: {args.scenes}, primitives per scene: {[len(s.primitives) for s in scenes]}")
    pose = (0.4, -0.3, 0.7)
    rng = np.random.default_rng(0)
    for beams in (32, 64):
        sensor = LidarSensor(LidarConfig(beams=beams, azimuth_samples=2048))
        ms = [median_ms(lambda: sensor.scan(sc, pose, rng), args.repeats) for sc in scenes]
        pts = len(sensor.scan(scenes[0], pose, rng)[0])
        print(f"lidar {beams:2d} x 2048 ({beams * 2048} rays, ~{pts} points): "
              f"{statistics.mean(ms):6.1f} ms / sweep  (per scene {[round(m, 1) for m in ms]})")
    cam = DepthCamera()
    ms = [median_ms(lambda: cam.capture(sc, pose, rng), args.repeats) for sc in scenes]
    print(f"depth 640 x 480 ({640 * 480} rays): {statistics.mean(ms):6.1f} ms / frame "
          f"(per scene {[round(m, 1) for m in ms]})")
    dirs = rng.normal(size=(100_000, 3)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = np.array([0.0, 0.0, 1.0])
    ms = [median_ms(lambda: cast_rays(origin, dirs, sc.primitives), args.repeats) for sc in scenes]
    print(f"cast_rays 100k random (incoherent) rays: {statistics.mean(ms):6.1f} ms "
          f"(per scene {[round(m, 1) for m in ms]})")


if __name__ == "__main__":
    main()
