#!/usr/bin/env python3
"""The fill of a dense sweep's removed rows, ways side by side (postprocess.FillQueries; issue 12's dense sweep).

At the cheap operating points of a 120k-point sweep, the predictor labels ~120k in-range rows the cap
removed from their nearest used point. That kd-tree query is the largest CPU cost of such a frame
(~30 ms of ~70 on one core). This script times the candidate ways on the same rows, interleaved, and
checks how often each gives the exact nearest used point:

    pykdtree_f32        the fill as shipped until this script (float32 tree and queries)
    pykdtree_f64        the same tree and queries in float64 (exact)
    pykdtree_eps{e}     approximate search, a neighbour within (1 + e) x the nearest distance
    ckdtree             scipy's cKDTree, one worker
    dedupe_{h}          one query per occupied h-metre voxel of the rows (np.unique), shared by its rows
    shared_{s}          one k=2 query every s rows in input order, kept for the rows it provably
                        serves (gap between the two nearest > 2 x the row's offset), exact queries
                        for the rest (exact)

    .venv/bin/python scripts/bench_fill.py [--repeats 7] -> docs/results/fill_alternatives.json (+ .png)

Sweeps: the KITTI HDL-64 scans of ../shared/data/scans when present, else the dense simulated LiDAR of
bench_adaptation (64 x 2304 rays). One thread (OMP_NUM_THREADS=1, as the fill's worker runs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POINTS = (1024, 2048, 4096, 16384)


def sweeps() -> tuple[list[np.ndarray], str]:
    from foundry_ros.bench_adaptation import DENSE_AZIMUTH, DENSE_BEAMS, SHARED_SCANS
    scans = sorted(SHARED_SCANS.glob("kitti_*.bin")) if SHARED_SCANS.is_dir() else []
    if scans:
        return [np.fromfile(s, dtype=np.float32).reshape(-1, 4)[:, :3].copy() for s in scans], "KITTI HDL-64 scans"
    from foundry_ros.demo import sim_stream
    return ([p[:, :3].astype(np.float32) for p, _ in sim_stream(3, 4, 10.0, beams=DENSE_BEAMS,
                                                                azimuth_samples=DENSE_AZIMUTH)],
            f"simulated {DENSE_BEAMS}-beam LiDAR")


def shared_queries(tree, q: np.ndarray, stride: int) -> np.ndarray:
    """Exact nearest neighbours of q (Q, 3) from one k=2 query every `stride` rows (see the docstring)."""
    n = q.shape[0]
    reps = np.arange(0, n, stride)
    d, i = tree.query(q[reps], k=2)
    rep = np.minimum(np.arange(n) // stride, reps.size - 1)
    off = q - q[reps][rep]
    ok = (d[:, 1] - d[:, 0])[rep] > 2.0 * np.sqrt(np.einsum("ij,ij->i", off, off)) + 1e-6
    out = i[:, 0][rep].astype(np.int64)
    bad = np.flatnonzero(~ok)
    if bad.size:
        out[bad] = tree.query(q[bad], k=1)[1]
    return out


def dedupe_queries(tree, q: np.ndarray, h: float) -> np.ndarray:
    key = np.floor(q / h).astype(np.int64)
    key = (key[:, 0] * 73856093) ^ (key[:, 1] * 19349663) ^ (key[:, 2] * 83492791)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return np.asarray(tree.query(q[first], k=1)[1], dtype=np.int64)[inverse.reshape(-1)]


def ways(ref: np.ndarray, q: np.ndarray) -> dict:
    from pykdtree.kdtree import KDTree
    from scipy.spatial import cKDTree
    ref64, q64 = ref.astype(np.float64), q.astype(np.float64)
    out = {"pykdtree_f32": lambda: KDTree(ref).query(q, k=1)[1],
           "pykdtree_f64": lambda: KDTree(ref64).query(q64, k=1)[1]}
    for e in (0.5, 1.0):
        out[f"pykdtree_eps{e:g}"] = lambda e=e: KDTree(ref).query(q, k=1, eps=e)[1]
    out["ckdtree"] = lambda: cKDTree(ref).query(q, k=1, workers=1)[1]
    out["dedupe_0.1"] = lambda: dedupe_queries(KDTree(ref), q, 0.1)
    out["shared_4"] = lambda: shared_queries(KDTree(ref64), q64, 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "docs/results/fill_alternatives.json"))
    args = ap.parse_args()
    from foundry_core.runtime.postprocess import removed_rows
    from foundry_core.runtime.preprocess import PreprocessConfig, preprocess
    from foundry_core.stages.common import write_json

    clouds, source = sweeps()
    result: dict = {"source": source, "points_in": int(np.median([len(c) for c in clouds])),
                    "threads": int(os.environ["OMP_NUM_THREADS"]), "repeats": args.repeats, "points": {}}
    for pts in POINTS:
        times: dict[str, list[float]] = {}
        exact: dict[str, list[float]] = {}
        extra_cm: dict[str, list[float]] = {}
        rows_n = []
        for cloud in clouds:
            pre = preprocess(cloud, PreprocessConfig(thinning="range", max_range=50.0, max_points=pts))
            rows = removed_rows(pre)
            rows_n.append(rows.size)
            ref = np.ascontiguousarray(cloud[pre.source_index], dtype=np.float32)
            q = np.ascontiguousarray(cloud[rows], dtype=np.float32)
            fns = ways(ref, q)
            base = np.asarray(fns["pykdtree_f64"](), dtype=np.int64)
            d0 = np.linalg.norm(q.astype(np.float64) - ref[base], axis=1)
            for rep in range(args.repeats + 1):                       # the first pass warms up
                for name, fn in fns.items():
                    t = time.perf_counter()
                    got = np.asarray(fn(), dtype=np.int64)
                    ms = (time.perf_counter() - t) * 1e3
                    if rep:
                        times.setdefault(name, []).append(ms)
                    else:                                     # exactness, once per sweep
                        d = np.linalg.norm(q.astype(np.float64) - ref[got], axis=1)
                        exact.setdefault(name, []).append(float(np.mean(d <= d0 + 1e-6)))
                        extra_cm.setdefault(name, []).append(float(np.mean(d - d0) * 100))
        base_ms = float(np.median(times["pykdtree_f32"]))
        result["points"][f"p{pts // 1024}k"] = {
            "rows": int(np.median(rows_n)),
            "ways": {name: {"p50_ms": round(float(np.median(ts)), 2),
                            "speedup_vs_f32": round(base_ms / float(np.median(ts)), 3),
                            "exact_fraction": round(float(np.mean(exact[name])), 5),
                            "mean_extra_distance_cm": round(float(np.mean(extra_cm[name])), 3)}
                     for name, ts in times.items()}}
        print(f"[fill] p{pts // 1024}k rows {int(np.median(rows_n))}: " + ", ".join(
            f"{n} {v['p50_ms']:.1f} ms ({v['exact_fraction'] * 100:.1f} % exact)"
            for n, v in result["points"][f"p{pts // 1024}k"]["ways"].items()), flush=True)
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"[fill] wrote {out} (+ .png)")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(next(iter(result["points"].values()))["ways"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ys = [p["ways"][name]["p50_ms"] for p in result["points"].values()]
        ax.bar(np.arange(len(ys)) + j * width, ys, width, label=name)
    ax.set_xticks(np.arange(len(result["points"])) + 0.4 - width / 2, list(result["points"]))
    ax.set(ylabel="fill of the removed rows, ms (one thread)", title=f"fill ways on {result['source']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
