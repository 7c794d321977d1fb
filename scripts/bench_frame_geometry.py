#!/usr/bin/env python3
"""Frame geometry beside the network vs in line (foundry_core/runtime/frame_geometry.py): the shipped
scene model at every operating point on simulated LiDAR sweeps (the demo's, ~58k points) and on dense
64-beam sweeps ("dense_131k": the dense LiDAR of
bench_adaptation, up to ~131k returns; ~90k in this scene), three ways interleaved frame by frame in one process:

    inline/all    LocalShape and the fill of removed rows after the network, torch on every thread
    inline/-1     the same on one thread less
    beside/-1     both on the worker thread while the network runs on one thread less (what
                  overlap_geometry uses)

It checks that every way gives the same labels, and writes the median / p90 latency of a Predictor
call per way and point, the fastest way, the way calibrate() chose, and the speed-up of the chosen
way over inline/all. Its "knobs" section times the worker's two settings beside the network at the
cheap points, interleaved the same way: the OpenMP threads of its kd-tree queries (KNOB_THREADS) and
the slices of the fill (KNOB_CHUNKS), each against the shipped GeometryWorker():

    .venv/bin/python scripts/bench_frame_geometry.py [--frames 8] [--repeats 3]
        -> docs/results/frame_geometry.json (+ .png)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = {"inline/all": (False, 0), "inline/-1": (False, -1), "beside/-1": (True, 0)}   # beside: the Predictor
#                                                                                        # itself runs torch on one less
KNOB_POINTS = ("p1k", "p2k", "p4k")
KNOB_THREADS = (1, 2)                # worker_threads (the shipped default first)
KNOB_CHUNKS = (8, 2, 16, 32)         # fill_chunks (the shipped default first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8, help="sweeps per stream")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the sweeps per point")
    ap.add_argument("--out", default="docs/results/frame_geometry.json")
    args = ap.parse_args()

    import torch
    from foundry_core.runtime.predictor import Predictor
    from foundry_core.stages.common import write_json
    from foundry_core.weights import default_model_path
    from foundry_ros.bench_adaptation import DENSE_AZIMUTH, DENSE_BEAMS
    from foundry_ros.demo import sim_stream

    threads = torch.get_num_threads()
    predictor = Predictor.from_checkpoint(str(default_model_path()), device="cpu")
    t0 = time.time()
    calibrated = predictor.calibrate()
    chosen = {name: ("beside/-1" if predictor.overlaps(op) else "inline/all")
              for name, op in ((op.name, op) for op in predictor.operating_points)}
    print(f"[bench] calibrate(): {calibrated} ({time.time() - t0:.1f} s), beside the network: "
          f"{predictor.overlap_by_point}", flush=True)
    streams = {"sim_58k": sim_stream(args.frames, 3, 10.0),
               "dense_131k": sim_stream(args.frames, 4, 10.0, beams=DENSE_BEAMS, azimuth_samples=DENSE_AZIMUTH)}
    result: dict = {"threads": threads, "calibrated_ms": calibrated, "chosen": chosen,
                    "ways": {w: {"beside": b, "torch_threads": threads + d} for w, (b, d) in WAYS.items()},
                    "streams": {}}
    for stream, frames in streams.items():
        points_in = int(np.median([len(p) for p, _ in frames]))
        rows = {}
        for op in predictor.operating_points:
            lat = {w: [] for w in WAYS}
            for rep in range(args.repeats + 1):                   # the first pass warms up
                for pts, _ in frames:
                    ref = None
                    for way, (beside, delta) in WAYS.items():
                        torch.set_num_threads(max(1, threads + delta))
                        t = time.perf_counter()
                        labels = predictor(pts, operating_point=op, overlap=beside).labels
                        ms = (time.perf_counter() - t) * 1e3
                        torch.set_num_threads(threads)
                        if ref is None:
                            ref = labels
                        elif not np.array_equal(ref, labels):
                            raise SystemExit(f"{stream} {op.name} {way}: labels differ from inline/all")
                        if rep:
                            lat[way].append(ms)
            row = {w: {"p50_ms": round(float(np.median(v)), 2), "p90_ms": round(float(np.percentile(v, 90)), 2)}
                   for w, v in lat.items()}
            fastest = min(row, key=lambda w: row[w]["p50_ms"])
            row.update(fastest=fastest, chosen=chosen[op.name],
                       speedup_chosen_vs_inline=round(row["inline/all"]["p50_ms"] / row[chosen[op.name]]["p50_ms"], 3))
            rows[op.name] = row
            print(f"[bench] {stream} {op.name}: " + "  ".join(f"{w} {row[w]['p50_ms']:.1f}" for w in WAYS) +
                  f"  fastest {fastest}, chosen {chosen[op.name]} ({row['speedup_chosen_vs_inline']:.2f}x)", flush=True)
        result["streams"][stream] = {"points_in": points_in, "frames": len(frames) * args.repeats, "points": rows}
    result["knobs"] = knob_sweep(predictor, streams, args.repeats)
    result["labels_identical"] = True
    out = write_json(args.out, result)
    plot(result, out.with_suffix(".png"))
    print(f"[bench] -> {out} (+ .png)")
    return 0


def knob_sweep(predictor, streams: dict, repeats: int) -> dict:
    """Median latency beside the network per worker setting (worker_threads, fill_chunks), one
    changed at a time from the shipped GeometryWorker(), frames interleaved across settings."""
    from foundry_core.runtime.frame_geometry import GeometryWorker
    settings = {f"threads{t}/chunks{c}": (t, c) for t, c in
                [(t, KNOB_CHUNKS[0]) for t in KNOB_THREADS] + [(KNOB_THREADS[0], c) for c in KNOB_CHUNKS[1:]]}
    workers = {name: GeometryWorker(worker_threads=t, fill_chunks=c) for name, (t, c) in settings.items()}
    shipped, out = predictor.geometry_worker, {"settings": {n: {"worker_threads": t, "fill_chunks": c}
                                                            for n, (t, c) in settings.items()}, "streams": {}}
    ops = {op.name: op for op in predictor.operating_points}
    try:
        for stream, frames in streams.items():
            rows = {}
            for name in KNOB_POINTS:
                lat: dict[str, list[float]] = {n: [] for n in settings}
                for rep in range(repeats + 1):
                    for pts, _ in frames:
                        for setting, worker in workers.items():
                            predictor.geometry_worker = worker
                            t = time.perf_counter()
                            predictor(pts, operating_point=ops[name], overlap=True)
                            if rep:
                                lat[setting].append((time.perf_counter() - t) * 1e3)
                rows[name] = {n: round(float(np.median(v)), 2) for n, v in lat.items()}
                print(f"[bench] knobs {stream} {name}: " + "  ".join(f"{n} {v:.1f}" for n, v in rows[name].items()),
                      flush=True)
            out["streams"][stream] = rows
    finally:
        predictor.geometry_worker = shipped
        for worker in workers.values():
            worker.close()
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(result["streams"]), figsize=(6 * len(result["streams"]), 4), squeeze=False)
    for ax, (stream, s) in zip(axes[0], result["streams"].items()):
        names = list(s["points"])
        for way in WAYS:
            ax.plot(names, [s["points"][n][way]["p50_ms"] for n in names], marker="o", label=way)
        ax.set_yscale("log")
        ax.set_title(f"{stream} ({s['points_in']} points in), median per call")
        ax.set_xlabel("operating point")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
