"""Adaptation benchmark: how the node's operating-point control copes with a steady stream, a deadline
step, a CPU hog and a dense sweep, each run ``--runs`` times through the demo (a fresh node each run).

    .venv/bin/python scripts/bench_adaptation.py [--duration 30] [--runs 3] [--out docs/results/adaptation.json]
    (same as python -m foundry_ros.bench_adaptation)

Runs ``python -m foundry_ros.demo`` for the scenarios steady, deadline-step and cpu-hog on the
simulated stream, and for a dense sweep replay: the three KITTI HDL-64 scans of
``../shared/data/scans`` packed into a bag under the work folder when they are there (``--dense-source
auto``), else the simulated 64-beam LiDAR at ~131k points a sweep (64 x 2304 rays), at 10 Hz. Each
value is the median over the runs. The operating points are those of the node's start-up
calibration table (its calibrated cost, median over every run, as latency_ms; the model card's mIoU),
or else the model's metadata (``Predictor.from_checkpoint(model).operating_points``). Writes ``--out``
with exactly::

    {"operating_points": [{"name", "points", "centers", "budget", "latency_ms", "miou"}],
     "scenarios": {"steady": {"frames", "hit_rate_after_10", "hit_rate_after_10_all_frames", "p95_ms", "mean_miou"},
                   "deadline_step": {"settle_frames", "hit_rate_after_settle"},
                   "cpu_hog": {"settle_frames", "hit_rate_after_settle", "recover_frames"},
                   "dense_sweep": {"points", "hit_rate_after_10", "hit_rate_after_10_all_frames"}}}

(the issue's schema plus hit_rate_after_10_all_frames: every cloud the node superseded by a newer one,
overwritten while waiting or abandoned late, counted as a miss; hit_rate_after_10 counts the frames
the node processed)

and a picture next to it (same name, .png): operating points (latency vs mIoU), and per scenario the
first run's latency / deadline and operating point over time with the phases shaded. Every run's
demo output (demo.json, frames.json, demo.png, node.log) stays in ``--work``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import dds
from . import scenarios as S
from .process import stop_process

ROOT = Path(__file__).resolve().parent.parent
SHARED_SCANS = ROOT.parent / "shared" / "data" / "scans"
#: The dense simulated LiDAR: 64 beams x 2304 azimuth samples, ~131k returns a sweep.
DENSE_BEAMS, DENSE_AZIMUTH = 64, 2304
DENSE_FRAMES = 20
#: Benchmark key -> (demo scenario, the schema's fields of that scenario).
SCHEMA: dict[str, tuple[str, tuple[str, ...]]] = {
    "steady": ("steady", ("frames", "hit_rate_after_10", "hit_rate_after_10_all_frames", "p95_ms", "mean_miou")),
    "deadline_step": ("deadline-step", ("settle_frames", "hit_rate_after_settle")),
    "cpu_hog": ("cpu-hog", ("settle_frames", "hit_rate_after_settle", "recover_frames")),
    "dense_sweep": ("steady", ("points", "hit_rate_after_10", "hit_rate_after_10_all_frames")),
}
POINT_FIELDS = ("name", "points", "centers", "budget", "latency_ms", "miou")
INT_FIELDS = ("frames", "settle_frames", "recover_frames", "points")


def _median(values: Sequence[Any], as_int: bool) -> Any:
    """Median of the values that are not None; rounded to a whole number for counts."""
    m = S.median_or_none(values)
    return int(round(m)) if as_int and m is not None else m


def aggregate(runs: dict[str, list[dict | None]]) -> dict[str, dict]:
    """The schema's scenario values: per benchmark key, the median over its runs' demo summaries
    (a failed run is None; "points" is the summary's mean_points_in)."""
    out = {}
    for key, (_, fields) in SCHEMA.items():
        got = [s for s in runs.get(key, []) if s is not None]
        out[key] = {f: _median([s.get("mean_points_in" if f == "points" else f) for s in got], f in INT_FIELDS)
                    for f in fields}
    return out


def calibrated_points(tables: Sequence[Sequence[dict]]) -> list[dict]:
    """Operating points of the node's calibration tables (one per run): the first table's points in
    its order, latency_ms the median calibrated cost over every table that has the point."""
    tables = [t for t in tables if t]
    if not tables:
        return []
    points = []
    for row in tables[0]:
        costs = [r["latency_ms"] for t in tables for r in t if r["name"] == row["name"]]
        cost = S.median_or_none(costs)
        points.append({**{f: row.get(f) for f in POINT_FIELDS}, "latency_ms": None if cost is None else round(cost, 2)})
    return points


def metadata_points(model: str) -> list[dict]:
    """Operating points of the model's metadata (Predictor.operating_points; [] where it has none)."""
    from foundry_core.runtime.predictor import Predictor
    from foundry_core.weights import DEFAULT_MODEL
    predictor = Predictor.from_checkpoint(model or str(DEFAULT_MODEL), device="cpu")
    return [{f: getattr(op, f, None) for f in POINT_FIELDS} for op in getattr(predictor, "operating_points", [])]


def dense_source(choice: str, work: Path) -> tuple[list[str], str]:
    """(demo arguments, words) of the dense sweep replay: KITTI scans in a bag (auto: when present), or
    the dense simulated LiDAR."""
    scans = sorted(SHARED_SCANS.glob("kitti_*.bin")) if SHARED_SCANS.is_dir() else []
    if choice == "kitti" and not scans:
        raise SystemExit(f"--dense-source kitti: no KITTI scans in {SHARED_SCANS}")
    if scans and choice in ("auto", "kitti"):
        from .bag import pack_scans
        bag = work / "kitti_scans.mcap"
        if not bag.exists():
            pack_scans(scans, bag, topic="/velodyne_points", rate_hz=10.0)
        return ["--bag", str(bag), "--topic", "/velodyne_points"], f"{len(scans)} KITTI HDL-64 scans ({bag})"
    return (["--beams", str(DENSE_BEAMS), "--azimuth-samples", str(DENSE_AZIMUTH), "--frames", str(DENSE_FRAMES)],
            f"simulated {DENSE_BEAMS}-beam LiDAR, {DENSE_BEAMS} x {DENSE_AZIMUTH} rays")


def run_demo(demo_args: list[str], out: Path, timeout_s: float) -> dict | None:
    """One demo run in its own process (local-only DDS set up before it starts), its output relayed
    indented; its demo.json, None when it failed."""
    out.mkdir(parents=True, exist_ok=True)
    env = dds.ros_env(workdir=out / "ros_env")
    cmd = [sys.executable, "-m", "foundry_ros.demo", "--quiet", "--out", str(out), *demo_args]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout_s, proc.terminate)       # SIGTERM: the demo cleans up its node
    watchdog.start()
    try:
        for line in proc.stdout:
            print("    " + line.rstrip(), flush=True)
    finally:
        watchdog.cancel()
        code = stop_process(proc, timeout=20)
    summary = out / "demo.json"
    if code != 0 or not summary.is_file():
        print(f"    [bench] the demo failed (exit {code}); see {out / 'node.log'}", flush=True)
        return None
    return json.loads(summary.read_text())


def plot(result: dict, traces: dict[str, tuple[dict, list[dict]]], path: Path) -> None:
    """Operating points (latency vs mIoU) and the first run of each scenario over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .demo import plot_latency, plot_points
    rows = 1 + len(SCHEMA)
    fig, ax = plt.subplots(rows, 2, figsize=(15, 3.6 * rows))
    ops = [op for op in result["operating_points"] if op.get("latency_ms") is not None]
    ax[0, 0].plot([op["latency_ms"] for op in ops], [op["miou"] or 0.0 for op in ops], "o-", color="tab:blue")
    for op in ops:
        ax[0, 0].annotate(f" {op['name']} ({op['points']} pts, {op['centers']} c)",
                          (op["latency_ms"], op["miou"] or 0.0), fontsize=8)
    ax[0, 0].set(xlabel="calibrated latency (ms)", ylabel="mIoU (%)", title="operating points")
    ax[0, 1].axis("off")
    ax[0, 1].text(0.0, 1.0, json.dumps(result["scenarios"], indent=1), va="top", family="monospace", fontsize=8)
    for i, key in enumerate(SCHEMA, start=1):
        if key not in traces:
            ax[i, 0].set_title(f"{key}: no run")
            ax[i, 1].axis("off")
            continue
        summary, trace = traces[key]
        plot_latency(ax[i, 0], trace, summary["phases"], f"{key} (run 1): p95 {summary['p95_ms']:.0f} ms, "
                     f"hit rate after 10 {100 * summary['hit_rate_after_10']:.0f} %")
        plot_points(ax[i, 1], trace, summary["phases"], summary["operating_points"], f"{key}: operating point")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench_adaptation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of streaming per run (default 30)")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario; values are their median (default 3)")
    ap.add_argument("--out", default="docs/results/adaptation.json", help="result file (a .png is written next to it)")
    ap.add_argument("--work", default="runs/bench_adaptation", help="folder of every run's demo output")
    ap.add_argument("--model", default="", help="model file (default: the shipped default model)")
    ap.add_argument("--dense-source", choices=("auto", "sim", "kitti"), default="auto",
                    help="dense sweep: KITTI scans when present (auto), or the simulated 64-beam LiDAR")
    ap.add_argument("--only", nargs="+", choices=tuple(SCHEMA), help="run only these (the others stay null)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.duration <= 0:
        ap.error("--runs must be >= 1 and --duration > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve()
    dense_args, dense_words = dense_source(args.dense_source, work)
    model = ["--model", args.model] if args.model else []
    keys = args.only or list(SCHEMA)
    jobs = [(key, k) for key in keys for k in range(args.runs)]
    print(f"[bench] {len(jobs)} demo runs of {args.duration:.0f} s ({', '.join(keys)}; {args.runs} each); "
          f"dense sweep: {dense_words}", flush=True)
    runs: dict[str, list[dict | None]] = {key: [] for key in keys}
    traces: dict[str, tuple[dict, list[dict]]] = {}
    t_start = time.monotonic()
    for i, (key, k) in enumerate(jobs):
        elapsed = time.monotonic() - t_start
        left = f", ~{elapsed / i * (len(jobs) - i) / 60:.1f} min left" if i else ""
        print(f"[bench] ({i + 1}/{len(jobs)}) {key} run {k + 1}/{args.runs}  [{elapsed / 60:.1f} min{left}]",
              flush=True)
        scenario = SCHEMA[key][0]
        run_out = work / key / f"run{k + 1}"
        demo_args = ["--scenario", scenario, "--duration", str(args.duration), *model,
                     *(dense_args if key == "dense_sweep" else [])]
        summary = run_demo(demo_args, run_out, timeout_s=args.duration + 600)
        runs[key].append(summary)
        if summary is not None and key not in traces:
            traces[key] = (summary, json.loads((run_out / "frames.json").read_text()))
        if summary is not None:
            got = {f: summary.get("mean_points_in" if f == "points" else f) for f in SCHEMA[key][1]}
            print(f"[bench] {key} run {k + 1}: " + ", ".join(f"{f} {_fmt(v)}" for f, v in got.items()), flush=True)
    points = calibrated_points([s.get("calibration") for v in runs.values() for s in v if s is not None])
    if not points:
        print("[bench] no calibration table in the node logs: operating points from the model's metadata", flush=True)
        points = metadata_points(args.model)
    result = {"operating_points": points, "scenarios": aggregate(runs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, traces, out.with_suffix(".png"))
    print(f"[bench] done in {(time.monotonic() - t_start) / 60:.1f} min: {out} and {out.with_suffix('.png')}",
          flush=True)
    print(json.dumps(result, indent=1), flush=True)
    failed = sum(s is None for v in runs.values() for s in v)
    return 1 if failed == len(jobs) else 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":
    sys.exit(main())
