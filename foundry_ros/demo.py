"""The main job: the Foundry node on the shipped default model, fed with an embedded simulated LiDAR
stream (or a bag, or a live topic), for a bounded time on loopback-only DDS.

    python -m foundry_ros.demo [--duration 30] [--bag PATH [--topic T]] [--live TOPIC] [--out DIR]

The node runs as its own process (``python -m foundry_ros.node`` with config/foundry.yaml, exactly
what ``foundry-node`` / the launch file run); this process plays the stream and listens to
``/foundry/report`` and ``/foundry/segments``. One line per processed frame (latency vs deadline,
token budget, points, backend), then a summary: p50 / p95 latency, deadline hit rate after the first
10 frames, mean budget, label histogram and, for the simulated stream, mIoU against the simulator's
ground truth next to the trivial all-ground baseline. Writes ``<out>/demo.json`` and
``<out>/demo.png`` (top view of the last labelled frame + latency / budget over time) and the last
labelled frame as ``<out>/last_frame.npz`` (xyz, labels, names).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import dds
from .pointcloud2 import decode_pointcloud2, make_pointcloud2
from .process import stop_process

ROOT = Path(__file__).resolve().parent.parent
INPUT_TOPIC = "/points"


@dataclass
class DemoState:
    """What the listener collected (filled from the executor thread)."""

    reports: list = field(default_factory=list)              # InferenceReport fields as dicts
    labels: dict[int, np.ndarray] = field(default_factory=dict)   # stamp_ns -> labels of the input points
    label_names: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def sim_stream(num_frames: int, seed: int, rate_hz: float):
    """Pre-generated frames of a scene that no training run used: [(points (N, 4), labels (N,))]."""
    from foundry_core.sim import LidarSensor, SensorStream, generate_scene
    stream = SensorStream(generate_scene((seed, 990_000)), LidarSensor(), rate_hz=rate_hz, seed=seed,
                          num_frames=num_frames, pregenerate=True)
    return [(f.points, f.labels) for f in stream.frames]


def summarize(state: DemoState, truth: dict[int, np.ndarray], num_classes: int, source: str) -> dict:
    from foundry_core.metrics import confusion, mean_iou
    reps = sorted(state.reports, key=lambda r: r["frame_index"])
    lat = np.array([r["latency_ms"] for r in reps], dtype=np.float64)
    after = [r for r in reps if r["frame_index"] >= 10]
    hits = [r["latency_ms"] <= r["deadline_ms"] for r in after]
    conf = np.zeros((num_classes, num_classes), np.int64)
    base = np.zeros_like(conf)
    hist = np.zeros(num_classes, np.int64)
    for stamp, pred in state.labels.items():
        ok = pred >= 0
        hist += np.bincount(pred[ok], minlength=num_classes)[:num_classes]
        if stamp in truth:
            gt = truth[stamp].astype(np.int64)
            conf += confusion(pred[ok].astype(np.int64), gt[ok], num_classes)
            base += confusion(np.zeros(int(ok.sum()), np.int64), gt[ok], num_classes)
    has_truth = bool(conf.sum())
    names = state.label_names or [str(i) for i in range(num_classes)]
    return {"frames": len(reps), "deadline_ms": float(np.median([r["deadline_ms"] for r in reps])) if reps else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if reps else 0.0,
            "p95_ms": float(np.percentile(lat, 95)) if reps else 0.0,
            "hit_rate_after_10": float(np.mean(hits)) if hits else 0.0,
            "mean_budget": float(np.mean([r["token_budget"] for r in reps])) if reps else 0.0,
            "miou": mean_iou(conf) if has_truth else None, "baseline_miou": mean_iou(base) if has_truth else None,
            "backend": reps[-1]["backend"] if reps else "",
            "mean_tokens_in_encoder": float(np.mean([r["tokens_in_encoder"] for r in reps])) if reps else 0.0,
            "frames_dropped_stale": int(sum(r["frames_dropped_stale"] for r in reps)),
            "stage_ms_median": {k: float(np.median([r[k + "_ms"] for r in reps])) if reps else 0.0
                                for k in ("preprocess", "tokenize", "encode", "head", "publish")},
            "label_histogram": {names[i] if i < len(names) else str(i): int(v) for i, v in enumerate(hist)},
            "source": source}


def plot(summary: dict, state: DemoState, clouds: dict[int, np.ndarray], path: Path) -> None:
    """Top view of the last labelled frame (clouds: stamp -> xyz) and latency / budget over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from foundry_core.runtime.predictor import label_colors
    fig, ax = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.1, 1]})
    names = state.label_names
    if clouds:
        stamp = max(clouds)
        lab, xyz = state.labels[stamp], clouds[stamp]
        cols = np.array(label_colors(max(len(names), int(lab.max()) + 1)))
        ok = lab >= 0
        ax[0].scatter(xyz[~ok, 0], xyz[~ok, 1], s=0.2, c="lightgray")
        for k in np.unique(lab[ok]):
            m = lab == k
            ax[0].scatter(xyz[m, 0], xyz[m, 1], s=0.3, color=cols[k], label=names[k] if k < len(names) else str(k))
        if ok.any():                             # zoom on the region the model labelled
            lo, hi = np.nanmin(xyz[ok, :2], 0) - 2.0, np.nanmax(xyz[ok, :2], 0) + 2.0
            ax[0].set_xlim(lo[0], hi[0])
            ax[0].set_ylim(lo[1], hi[1])
        ax[0].legend(markerscale=15, fontsize=8, loc="upper right")
        ax[0].set_aspect("equal")
        ax[0].set(title="last labelled frame (top view)", xlabel="x (m)", ylabel="y (m)")
    reps = sorted(state.reports, key=lambda r: r["frame_index"])
    t = [r["frame_index"] for r in reps]
    ax[1].plot(t, [r["latency_ms"] for r in reps], label="latency ms", color="tab:blue")
    ax[1].plot(t, [r["deadline_ms"] for r in reps], "--", label="deadline ms", color="tab:red")
    ax[1].set(xlabel="frame", ylabel="ms", title=f"p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
              f"hit rate {100 * summary['hit_rate_after_10']:.0f} % ({summary['backend']})")
    ax2 = ax[1].twinx()
    ax2.plot(t, [r["token_budget"] for r in reps], color="tab:green", label="token budget")
    ax2.plot(t, [r["tokens_in_encoder"] for r in reps], ":", color="tab:olive", label="tokens in encoder")
    ax2.set_ylabel("tokens")
    lines = ax[1].get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax[1].legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_node(env: dict, out: Path, model: str, topic: str, extra_params: list[str]) -> subprocess.Popen:
    overrides = out / "node_overrides.yaml"
    params = {"input_topics": [topic], "qos_reliability": "reliable"}
    if model:
        params["model_path"] = str(Path(model).resolve())
    for item in extra_params:
        k, v = item.split("=", 1)
        params[k] = yaml.safe_load(v)
    overrides.write_text(yaml.safe_dump({"foundry": {"ros__parameters": params}}))
    log = open(out / "node.log", "w")
    return subprocess.Popen([sys.executable, "-m", "foundry_ros.node", "--params-file",
                             str(ROOT / "config" / "foundry.yaml"), "--params-file", str(overrides)],
                            env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="foundry-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of streaming (default 30)")
    ap.add_argument("--rate", type=float, default=10.0, help="simulated sensor rate in Hz")
    ap.add_argument("--frames", type=int, default=60, help="simulated frames generated (looped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bag", help="play this rosbag2 (sqlite3 / MCAP) instead of the simulated stream")
    ap.add_argument("--topic", help="PointCloud2 topic of the bag to play (default: its first)")
    ap.add_argument("--live", metavar="TOPIC", help="no stream: the node listens to this live topic")
    ap.add_argument("--model", default="", help="model file (default: the shipped default model)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra node parameter")
    ap.add_argument("--out", default="runs/demo", help="output folder (demo.json, demo.png, node.log)")
    ap.add_argument("--quiet", action="store_true", help="no line per frame")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dds.ros_env(workdir=out / "ros")
    dds.apply_in_process(env)                 # before rclpy is imported / initialised
    topic = args.live or INPUT_TOPIC
    frames = None
    if not args.bag and not args.live:
        print(f"[demo] generating {args.frames} simulated LiDAR sweeps ...", flush=True)
        frames = sim_stream(args.frames, args.seed, args.rate)
    node_proc = start_node(env, out, args.model, topic, args.param)
    print(f"[demo] node started (pid {node_proc.pid}, log {out / 'node.log'}); DDS domain {env['ROS_DOMAIN_ID']}, "
          "loopback only", flush=True)
    try:
        return run_client(args, out, node_proc, frames, topic)
    finally:
        stop_process(node_proc, timeout=10)
        dds.remove_stale_shm_segments()


def run_client(args, out: Path, node_proc: subprocess.Popen, frames, topic: str) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2, PointField
    from foundry_msgs.msg import InferenceReport, LabelMap

    rclpy.init()
    node = rclpy.create_node("foundry_demo")
    state = DemoState()
    truth: dict[int, np.ndarray] = {}
    clouds: dict[int, np.ndarray] = {}

    def on_report(m):
        r = {k: getattr(m, k) for k in ("latency_ms", "deadline_ms", "token_budget", "tokens_in_encoder",
                                          "points_in", "points_used", "backend", "frame_index",
                                          "frames_dropped_stale", "preprocess_ms", "tokenize_ms", "encode_ms",
                                          "head_ms", "publish_ms")}
        with state.lock:
            state.reports.append(r)
        if not args.quiet:
            ok = "ok  " if r["latency_ms"] <= r["deadline_ms"] else "MISS"
            print(f"[demo] frame {r['frame_index']:4d}  latency {r['latency_ms']:6.1f} ms / deadline "
                  f"{r['deadline_ms']:5.1f} ms {ok}  budget {r['token_budget']:4d}  tokens {r['tokens_in_encoder']:4d}"
                  f"  points {r['points_in']:6d}  {r['backend']}", flush=True)

    def on_segments(m):
        d = decode_pointcloud2(m, extra=("label",))
        lab = np.full(d.num_input, -1, np.int32)
        lab[d.index] = d.extra["label"].astype(np.int32).reshape(-1)
        stamp = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        xyz = np.full((d.num_input, 3), np.nan, np.float32)
        xyz[d.index] = d.xyz
        with state.lock:
            state.labels[stamp] = lab
            clouds.clear()
            clouds[stamp] = xyz

    def on_labels(m):
        state.label_names = [e.name for e in sorted(m.entries, key=lambda e: e.id)]

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(InferenceReport, "/foundry/report", on_report, 50)
    node.create_subscription(PointCloud2, "/foundry/segments", on_segments, 5)
    node.create_subscription(LabelMap, "/foundry/labels", on_labels, latched)
    pub = node.create_publisher(PointCloud2, topic, 2) if frames is not None else None
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        print("[demo] waiting for the node (model load; the first start also exports it to ONNX) ...", flush=True)
        t0 = time.monotonic()
        while node.count_publishers("/foundry/report") == 0 or (pub is not None and pub.get_subscription_count() == 0):
            if node_proc.poll() is not None:
                print(f"[demo] the node exited with code {node_proc.returncode}; see {out / 'node.log'}:", flush=True)
                print("".join((out / "node.log").read_text().splitlines(True)[-15:]), flush=True)
                return 1
            if time.monotonic() - t0 > 180:
                print("[demo] the node did not come up within 180 s", flush=True)
                return 1
            time.sleep(0.1)
        time.sleep(1.0)
        print(f"[demo] streaming for {args.duration:.0f} s", flush=True)
        if frames is not None:
            publish_sim(node, pub, frames, args, truth, PointCloud2, PointField)
        elif args.bag:
            from .bag import list_pointcloud_topics
            from .bag_replay import BagPlayer
            played = args.topic or sorted(list_pointcloud_topics(args.bag))[0]
            player = BagPlayer(node, args.bag, topics=[played], topic_map={played: topic}, loop=True, restamp=True)
            player.wait_for_subscribers(1, 30)
            player.play(duration=args.duration)
        else:
            time.sleep(args.duration)
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and len(state.reports) < max(1, len(truth)) and frames is not None:
            time.sleep(0.1)
    finally:
        ex.shutdown()
        spin.join(timeout=5.0)      # no callback may run while the summary reads what they collected
        node.destroy_node()
        rclpy.shutdown()
    with state.lock:                # new names: a callback still in flight after the join writes to the originals
        got = DemoState(reports=list(state.reports), labels=dict(state.labels), label_names=list(state.label_names))
        last_clouds = dict(clouds)
    num_classes = max(len(got.label_names), 1 + max((int(v.max()) for v in got.labels.values()), default=0))
    source = "simulated LiDAR stream" if frames is not None else (f"bag {args.bag}" if args.bag else f"live {topic}")
    summary = summarize(got, truth, num_classes, source)
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    if last_clouds:
        stamp = max(last_clouds)
        np.savez_compressed(out / "last_frame.npz", xyz=last_clouds[stamp], labels=got.labels[stamp],
                            names=np.array(got.label_names))
    plot(summary, got, last_clouds, out / "demo.png")
    print_summary(summary, out)
    return 0 if summary["frames"] > 0 else 1


def publish_sim(node, pub, frames, args, truth, PointCloud2, PointField) -> None:
    """Publish the simulated frames at args.rate for args.duration, stamped now; keep their truth."""
    msgs = []
    for pts, _ in frames:
        m = make_pointcloud2(PointCloud2, PointField, {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
                                                       "intensity": pts[:, 3]}, height=1, width=len(pts))
        m.header.frame_id = "lidar"
        msgs.append(m)
    period = 1.0 / args.rate
    n = int(round(args.duration * args.rate))
    start = time.monotonic()
    for i in range(n):
        due = start + i * period
        time.sleep(max(0.0, due - time.monotonic()))
        k = i % len(frames)
        now = node.get_clock().now().nanoseconds
        msgs[k].header.stamp.sec, msgs[k].header.stamp.nanosec = divmod(now, 1_000_000_000)
        truth[now] = frames[k][1]
        pub.publish(msgs[k])


def print_summary(s: dict, out: Path) -> None:
    print("[demo] ---------------------------------------------------------------", flush=True)
    print(f"[demo] {s['frames']} frames from {s['source']} on {s['backend']}: latency p50 {s['p50_ms']:.1f} ms, "
          f"p95 {s['p95_ms']:.1f} ms; deadline {s['deadline_ms']:.0f} ms met on {100 * s['hit_rate_after_10']:.1f} % "
          f"of frames after the first 10; mean token budget {s['mean_budget']:.0f}", flush=True)
    print("[demo] node stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_ms_median"].items()),
          flush=True)
    if s["miou"] is not None:
        print(f"[demo] mIoU vs simulator ground truth {s['miou']:.1f} % (all-ground baseline "
              f"{s['baseline_miou']:.1f} %)", flush=True)
    total = max(1, sum(s["label_histogram"].values()))
    print("[demo] labels: " + ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in s["label_histogram"].items() if v),
          flush=True)
    print(f"[demo] summary: {out / 'demo.json'}   picture: {out / 'demo.png'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
