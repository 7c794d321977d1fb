"""Soak: a bounded stream of large clouds into the node, with every published frame accounted for.

    python -m foundry_ros.soak [--duration 180] [--rate 10] [--source auto|kitti|sim] [--out docs/results/soak.json]

The node runs as its own process (``python -m foundry_ros.node`` with config/foundry.yaml and its
default parameters: best-effort input, depth as configured), exactly as a user starts it; this
process plays the clouds best-effort at ``--rate`` like a LiDAR driver (KITTI sweeps of
``../shared/data/scans`` when present, else the simulated 64-beam sensor at 120k+ points), listens to
``/foundry/report`` and ``/diagnostics``, and samples the node's resident memory. At the end it stops
the stream, waits for the node's last diagnostics and writes::

    {"published", "received", "processed", "stale", "too_old", "lost_counted", "failed", "in_flight",
     "uncounted", "uncounted_fraction", "rss_mb_start", "rss_mb_end", "rss_growth", "p95_ms", ...}

``received`` .. ``failed`` are the node's own counters (diagnostics); ``uncounted`` = published -
received - lost_counted (frames the node accounts nowhere), ``in_flight`` = received - processed -
stale - too_old - failed (0 or 1: a frame still in the slot). ``rss_mb_start`` is taken after
``--warmup-s`` of streaming. The process-group and DDS set-up is :func:`foundry_ros.dds.ros_env`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from . import dds
from .pointcloud2 import make_pointcloud2
from .process import stop_process

ROOT = Path(__file__).resolve().parent.parent
SCANS = ROOT.parent / "shared" / "data" / "scans"
TOPIC = "/points"
NODE_NAME = "foundry"
COUNTERS = {"received": "frames_received", "processed": "frames_processed", "stale": "frames_dropped_stale",
            "too_old": "frames_dropped_age", "lost_counted": "frames_lost"}


def kitti_clouds(folder: Path = SCANS) -> list[np.ndarray]:
    """KITTI velodyne sweeps (N, 4) x y z reflectance of ``folder`` (``kitti_*.bin``), [] if absent."""
    return [np.fromfile(p, dtype=np.float32).reshape(-1, 4) for p in sorted(folder.glob("kitti_*.bin"))]


def sim_clouds(num: int, seed: int = 0) -> list[np.ndarray]:
    """Sweeps (N, 4) of the simulated 64-beam sensor (2,048 azimuths: 120k+ points each)."""
    from foundry_core.sim import LidarConfig, LidarSensor, SensorStream, generate_scene
    sensor = LidarSensor(LidarConfig(beams=64, fov_up_deg=2.0, fov_down_deg=-24.8, azimuth_samples=2048,
                                     max_range=120.0))
    stream = SensorStream(generate_scene((seed, 991_000)), sensor, rate_hz=10.0, seed=seed, num_frames=num,
                          pregenerate=True)
    return [f.points for f in stream.frames]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS), NaN if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def start_node(env: dict, workdir: Path, node_cmd: list[str], params: dict) -> subprocess.Popen:
    overrides = workdir / "node_overrides.yaml"
    overrides.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}))
    log = open(workdir / "node.log", "w")
    return subprocess.Popen([sys.executable, *node_cmd, "--params-file", str(ROOT / "config" / "foundry.yaml"),
                             "--params-file", str(overrides)], env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="foundry-soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of streaming (default 180)")
    ap.add_argument("--rate", type=float, default=10.0, help="publication rate in Hz (default 10)")
    ap.add_argument("--source", choices=("auto", "kitti", "sim"), default="auto",
                    help="KITTI sweeps of ../shared/data/scans (auto: when present) or the simulated 64-beam sensor")
    ap.add_argument("--sim-frames", type=int, default=10, help="simulated sweeps generated (looped)")
    ap.add_argument("--points", type=int, default=0, help="cut every cloud to this many points (0: as is)")
    ap.add_argument("--model", default="", help="model file (default: the shipped default model)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra node parameter")
    ap.add_argument("--node-cmd", nargs="+", default=["-m", "foundry_ros.node"],
                    help="python arguments that start the node (default: -m foundry_ros.node)")
    ap.add_argument("--warmup-s", type=float, default=20.0, help="streaming time before rss_mb_start")
    ap.add_argument("--shm-segment-mb", type=float, default=0.0,
                    help="shared-memory segment of both processes (default: foundry_ros.dds, 64 MiB)")
    ap.add_argument("--out", default="runs/soak/soak.json", help="result file")
    ap.add_argument("--work", default="runs/soak/work", help="folder of the node's log, parameters and DDS files")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    workdir = Path(args.work).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    seg = int(args.shm_segment_mb * 2**20) if args.shm_segment_mb > 0 else None
    env = dds.ros_env(workdir=workdir / "ros", shm_segment_bytes=seg)
    dds.apply_in_process(env)                 # before rclpy is imported / initialised
    clouds, source = _clouds(args)
    params = {"input_topics": [TOPIC]}
    if args.model:
        params["model_path"] = str(Path(args.model).resolve())
    for item in args.param:
        k, v = item.split("=", 1)
        params[k] = yaml.safe_load(v)
    node = start_node(env, workdir, args.node_cmd, params)
    print(f"[soak] node pid {node.pid} (log {workdir / 'node.log'}); {len(clouds)} clouds of "
          f"{int(np.mean([len(c) for c in clouds]))} points from {source}, {args.rate:g} Hz for {args.duration:g} s",
          flush=True)
    try:
        result = run_client(args, node, clouds, workdir)
    finally:
        stop_process(node, timeout=10)
        dds.remove_stale_shm_segments()
    if result is None:
        return 1
    result.update(source=source, points_per_cloud=int(np.mean([len(c) for c in clouds])), rate_hz=args.rate,
                  duration_s=args.duration, shm_segment_mb=(seg or dds.default_segment_bytes(env)) / 2**20,
                  node_params=params)
    out.write_text(json.dumps(result, indent=1))
    print(f"[soak] {json.dumps({k: result[k] for k in ('published', 'received', 'processed', 'stale', 'too_old', 'lost_counted', 'uncounted', 'rss_mb_start', 'rss_mb_end', 'p95_ms')})}",
          flush=True)
    print(f"[soak] written {out}", flush=True)
    return 0


def _clouds(args) -> tuple[list[np.ndarray], str]:
    clouds: list[np.ndarray] = []
    source = "simulated 64-beam LiDAR"
    if args.source in ("auto", "kitti"):
        clouds = kitti_clouds()
        if clouds:
            source = f"KITTI sweeps ({SCANS})"
        elif args.source == "kitti":
            raise SystemExit(f"no kitti_*.bin in {SCANS}")
    if not clouds:
        print(f"[soak] simulating {args.sim_frames} 64-beam sweeps ...", flush=True)
        clouds = sim_clouds(args.sim_frames)
    if args.points > 0:
        clouds = [c[: args.points] for c in clouds]
    return clouds, source


def run_client(args, node_proc: subprocess.Popen, clouds: list[np.ndarray], workdir: Path) -> dict | None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from foundry_msgs.msg import InferenceReport
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2, PointField

    rclpy.init()
    client = rclpy.create_node("foundry_soak")
    lock = threading.Lock()
    latencies: list[float] = []
    diag: dict[str, str] = {}

    def on_report(m):
        with lock:
            latencies.append(float(m.latency_ms))

    def on_diag(m):
        for st in m.status:
            if st.name.startswith(f"{NODE_NAME}:"):
                with lock:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in st.values})
                    diag["_stamp"] = time.monotonic()

    client.create_subscription(InferenceReport, f"/{NODE_NAME}/report", on_report, 100)
    client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    pub = client.create_publisher(PointCloud2, TOPIC, qos_profile_sensor_data)  # a driver: best-effort, depth 5
    msgs = []
    for pts in clouds:
        m = make_pointcloud2(PointCloud2, PointField, {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
                                                       "intensity": pts[:, 3]}, height=1, width=len(pts))
        m.header.frame_id = "lidar"
        msgs.append(m)
    ex = SingleThreadedExecutor()
    ex.add_node(client)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    published = 0
    try:
        t0 = time.monotonic()
        while client.count_publishers(f"/{NODE_NAME}/report") == 0 or pub.get_subscription_count() == 0:
            if node_proc.poll() is not None or time.monotonic() - t0 > 300:
                print(f"[soak] the node did not come up (exit {node_proc.poll()}); see {workdir / 'node.log'}",
                      flush=True)
                return None
            time.sleep(0.1)
        time.sleep(1.0)
        period, n = 1.0 / args.rate, int(round(args.duration * args.rate))
        rss_start, rss_samples = float("nan"), []
        start = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, start + i * period - time.monotonic()))
            m = msgs[i % len(msgs)]
            now = client.get_clock().now().nanoseconds
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(now, 1_000_000_000)
            pub.publish(m)
            published += 1
            if i % int(max(1, args.rate * 5)) == 0:
                rss_samples.append(rss_mb(node_proc.pid))
                if np.isnan(rss_start) and time.monotonic() - start >= args.warmup_s:
                    rss_start = rss_samples[-1]
                print(f"[soak] {time.monotonic() - start:6.1f} s: {published} published, {len(latencies)} reports, "
                      f"node RSS {rss_samples[-1]:.0f} MiB", flush=True)
            if node_proc.poll() is not None:
                print(f"[soak] the node exited with code {node_proc.returncode} during the stream", flush=True)
                return None
        rss_end = rss_mb(node_proc.pid)
        stop = time.monotonic()
        while time.monotonic() - stop < 15.0:       # the node's diagnostics after the last frame settled
            time.sleep(0.2)
            with lock:
                fresh = diag.get("_stamp", 0.0) > stop + 2.5
            if fresh:
                break
    finally:
        ex.shutdown()
        spin.join(timeout=5.0)
        client.destroy_node()
        rclpy.shutdown()
    with lock:
        d, lat = dict(diag), list(latencies)
    if not d:
        print("[soak] no diagnostics from the node", flush=True)
        return None
    counts = {k: int(d[v]) for k, v in COUNTERS.items()}
    failed = int(d["decode_errors"]) + int(d["predictor_errors"])
    uncounted = published - counts["received"] - counts["lost_counted"]
    return dict(published=published, **counts, failed=failed,
                in_flight=counts["received"] - counts["processed"] - counts["stale"] - counts["too_old"] - failed,
                uncounted=uncounted, uncounted_fraction=uncounted / max(1, published),
                messages_lost_events=int(d.get("messages_lost_events", 0)),
                rss_mb_start=rss_start if not np.isnan(rss_start) else (rss_samples[0] if rss_samples else rss_end),
                rss_mb_end=rss_end, rss_mb_samples=rss_samples,
                rss_growth=(rss_end / rss_start - 1.0) if rss_start == rss_start and rss_start > 0 else None,
                p50_ms=float(np.percentile(lat, 50)) if lat else None,
                p95_ms=float(np.percentile(lat, 95)) if lat else None, reports=len(lat),
                hit_rate=float(np.mean(np.array(lat) <= float(d["deadline_ms"]))) if lat else None,
                deadline_ms=float(d["deadline_ms"]), largest_cloud_mb=float(d.get("largest_cloud_mb", "nan")),
                operating_points=d.get("operating_points", ""))


if __name__ == "__main__":
    sys.exit(main())
