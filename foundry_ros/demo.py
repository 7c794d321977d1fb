"""The main job: the Foundry node on the shipped default model, fed with an embedded simulated LiDAR
stream (or a bag, or a live topic), for a bounded time on loopback-only DDS, in one of a few scenarios.

    python -m foundry_ros.demo [--scenario steady|deadline-step|cpu-hog|all] [--duration 30]
                               [--bag PATH [--topic T]] [--live TOPIC] [--out DIR]

The node runs as its own process (``python -m foundry_ros.node`` with config/foundry.yaml, exactly
what ``foundry-node`` / the launch file run); this process plays the stream and listens to
``/foundry/report`` and ``/foundry/segments``. Scenarios (:mod:`foundry_ros.scenarios`): ``steady``
(the stream as it is, the default), ``deadline-step`` (deadline 100 ms, then 50 ms from one third of
the run, set on the running node through its parameter service ``/foundry/set_parameters``),
``cpu-hog`` (a bounded busy process pinned to one core, :mod:`foundry_ros.cpu_hog`, from one third to
two thirds of the run; always killed at the end, also on Ctrl-C or an error) and ``all`` (the three in
sequence, a fresh node each, files in ``<out>/<scenario>/`` and all summaries in
``<out>/scenarios.json``).

One line per processed frame (latency vs deadline, token budget, tokens, points, backend, operating
point), then a summary: p50 / p95 latency, deadline hit rate after the first 10 frames, mean budget,
label histogram and, for the simulated stream, mIoU against the simulator's ground truth (over the
run, and the mean of the per-frame mIoU) next to the trivial all-ground baseline; for deadline-step
and cpu-hog the frames until latency settled within the deadline, the hit rate after that and (cpu-hog)
the frames until the node is back at its operating point of before the hog. Writes ``<out>/demo.json``
(the summary), ``<out>/frames.json`` (one row per frame: arrival time, phase, latency, deadline,
operating point, tokens, per-frame mIoU), ``<out>/demo.png`` (top view of the last labelled frame,
latency / deadline and operating point / tokens over time with the phases shaded) and the last
labelled frame as ``<out>/last_frame.npz`` (xyz, labels, names).
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import dds
from . import scenarios as S
from .cpu_hog import CpuHog
from .pointcloud2 import decode_pointcloud2, make_pointcloud2
from .process import stop_process

ROOT = Path(__file__).resolve().parent.parent
INPUT_TOPIC = "/points"
SET_PARAMETERS_SERVICE = "/foundry/set_parameters"
REPORT_FIELDS = ("latency_ms", "deadline_ms", "token_budget", "tokens_in_encoder", "num_centers", "points_in",
                 "points_used", "backend", "frame_index", "frames_dropped_stale", "preprocess_ms", "tokenize_ms",
                 "encode_ms", "head_ms", "publish_ms")
STAGES = ("preprocess", "tokenize", "encode", "head", "publish")
PHASE_COLORS = ("none", "tab:orange", "tab:purple", "tab:cyan")


@dataclass
class DemoState:
    """What the listener collected (filled from the executor thread)."""

    reports: list = field(default_factory=list)              # InferenceReport fields as dicts
    labels: dict[int, np.ndarray] = field(default_factory=dict)   # stamp_ns -> labels of the input points
    label_names: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    t0: float = field(default_factory=time.monotonic)        # report times are seconds since this


def sim_stream(num_frames: int, seed: int, rate_hz: float, beams: int | None = None,
               azimuth_samples: int | None = None):
    """Pre-generated frames of a scene that no training run used: [(points (N, 4), labels (N,))].
    beams / azimuth_samples: the simulated LiDAR's (default: LidarConfig's, ~55k points a sweep)."""
    from foundry_core.sim import LidarSensor, SensorStream, generate_scene
    from foundry_core.sim.lidar import LidarConfig
    over = {k: v for k, v in (("beams", beams), ("azimuth_samples", azimuth_samples)) if v}
    stream = SensorStream(generate_scene((seed, 990_000)), LidarSensor(LidarConfig(**over)), rate_hz=rate_hz,
                          seed=seed, num_frames=num_frames, pregenerate=True)
    return [(f.points, f.labels) for f in stream.frames]


# ================================================================================================
# summary

def frame_mious(state: DemoState, truth: dict[int, np.ndarray], num_classes: int):
    """(confusion over the run, all-ground baseline confusion, label histogram, stamp -> frame mIoU)."""
    from foundry_core.metrics import confusion, mean_iou
    conf = np.zeros((num_classes, num_classes), np.int64)
    base = np.zeros_like(conf)
    hist = np.zeros(num_classes, np.int64)
    per_frame: dict[int, float] = {}
    for stamp, pred in state.labels.items():
        ok = pred >= 0
        hist += np.bincount(pred[ok], minlength=num_classes)[:num_classes]
        if stamp in truth:
            gt = truth[stamp].astype(np.int64)
            c = confusion(pred[ok].astype(np.int64), gt[ok], num_classes)
            conf += c
            base += confusion(np.zeros(int(ok.sum()), np.int64), gt[ok], num_classes)
            per_frame[stamp] = mean_iou(c)
    return conf, base, hist, per_frame


def build_trace(reps: list[dict], per_frame_miou: dict[int, float], event_times: list[float],
                order: list[str]) -> tuple[list[dict], list[str]]:
    """One row per report (frame order) with its phase index, operating point rank and frame mIoU;
    and the operating point order used for the ranks."""
    ranks, order = S.point_ranks([r["operating_point"] for r in reps], order, [r["token_budget"] for r in reps])
    phases = S.phase_of_frames([r["t_s"] for r in reps], event_times)
    rows = []
    for r, rank, phase in zip(reps, ranks, phases):
        miou = per_frame_miou.get(r["stamp"])
        rows.append({"frame_index": r["frame_index"], "t_s": round(r["t_s"], 4), "phase": phase,
                     "latency_ms": r["latency_ms"], "deadline_ms": r["deadline_ms"],
                     "hit": r["latency_ms"] <= r["deadline_ms"], "operating_point": r["operating_point"],
                     "point_rank": rank, "tokens_in_encoder": r["tokens_in_encoder"],
                     "token_budget": r["token_budget"], "num_centers": r["num_centers"],
                     "points_in": r["points_in"], "points_used": r["points_used"],
                     "stage_ms": {k: round(r[k + "_ms"], 2) for k in STAGES},
                     "miou": None if miou is None or not math.isfinite(miou) else miou})
    return rows, order


def summarize(state: DemoState, truth: dict[int, np.ndarray], num_classes: int, source: str,
              scenario: S.Scenario | None = None, event_times: list[float] | None = None,
              order: list[str] | None = None, events: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """(summary, per-frame trace) of one run."""
    from foundry_core.metrics import mean_iou
    scenario = scenario or S.SCENARIOS["steady"]
    event_times = list(event_times if event_times is not None else [])
    reps = sorted(state.reports, key=lambda r: r["frame_index"])
    lat = np.array([r["latency_ms"] for r in reps], dtype=np.float64)
    after = [r for r in reps if r["frame_index"] >= 10]
    hits = [r["latency_ms"] <= r["deadline_ms"] for r in after]
    conf, base, hist, per_frame = frame_mious(state, truth, num_classes)
    trace, order = build_trace(reps, per_frame, event_times, list(order or []))
    has_truth = bool(conf.sum())
    names = state.label_names or [str(i) for i in range(num_classes)]
    frame_ious = [row["miou"] for row in trace if row["miou"] is not None]
    times = [row["t_s"] for row in trace]
    starts = S.phase_starts(times, event_times)
    summary = {
        "scenario": scenario.name, "frames": len(reps),
        "deadline_ms": float(np.median([r["deadline_ms"] for r in reps])) if reps else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if reps else 0.0,
        "p95_ms": float(np.percentile(lat, 95)) if reps else 0.0,
        "hit_rate_after_10": float(np.mean(hits)) if hits else 0.0,
        "hit_rate_after_10_all_frames": all_frames_hit_rate(after),
        "mean_budget": float(np.mean([r["token_budget"] for r in reps])) if reps else 0.0,
        "miou": mean_iou(conf) if has_truth else None, "baseline_miou": mean_iou(base) if has_truth else None,
        "mean_miou": float(np.mean(frame_ious)) if frame_ious else None,
        "backend": reps[-1]["backend"] if reps else "",
        "mean_tokens_in_encoder": float(np.mean([r["tokens_in_encoder"] for r in reps])) if reps else 0.0,
        "mean_points_in": float(np.mean([r["points_in"] for r in reps])) if reps else 0.0,
        "frames_dropped_stale": int(sum(r["frames_dropped_stale"] for r in reps)),
        "stage_ms_median": {k: float(np.median([r[k + "_ms"] for r in reps])) if reps else 0.0 for k in STAGES},
        "label_histogram": {names[i] if i < len(names) else str(i): int(v) for i, v in enumerate(hist)},
        "operating_points": order,
        "point_histogram": {n: sum(1 for r in reps if r["operating_point"] == n) for n in order},
        "point_latency_ms_p50": point_latency_p50(reps, order),
        "phases": [{"name": name, "start_s": 0.0 if k == 0 else event_times[k - 1], "first_frame": starts[k],
                    "frames": (starts[k + 1] if k + 1 < len(starts) else len(reps)) - starts[k]}
                   for k, name in enumerate(scenario.phases)],
        "events": events or [],
        "source": source}
    summary.update(S.scenario_metrics(scenario, times, [r["latency_ms"] for r in trace],
                                      [r["deadline_ms"] for r in trace], [r["point_rank"] for r in trace],
                                      event_times, order))
    return summary, trace


def all_frames_hit_rate(reports: list[dict]) -> float:
    """Share of the clouds of a run's stretch within the deadline, counting every cloud superseded by a
    newer one (overwritten in the slot or abandoned late: each report's frames_dropped_stale) as a miss."""
    superseded = sum(int(r["frames_dropped_stale"]) for r in reports)
    total = len(reports) + superseded
    return sum(r["latency_ms"] <= r["deadline_ms"] for r in reports) / total if total else 0.0


def point_latency_p50(reps: list[dict], order: list[str]) -> dict[str, float]:
    """Median end-to-end frame latency (ms) of the frames run at each operating point (points never chosen
    are left out)."""
    out = {}
    for name in order:
        lat = [r["latency_ms"] for r in reps if r["operating_point"] == name]
        if lat:
            out[name] = float(np.median(lat))
    return out


# ================================================================================================
# pictures

def shade_phases(ax, phases: list[dict], end_s: float) -> None:
    """Shade every phase after the first and name it at the top of the axes."""
    for k, ph in enumerate(phases):
        if k == 0:
            continue
        stop = phases[k + 1]["start_s"] if k + 1 < len(phases) else end_s
        ax.axvspan(ph["start_s"], max(stop, ph["start_s"]), color=PHASE_COLORS[k % len(PHASE_COLORS)], alpha=0.12)
        ax.text(ph["start_s"], 1.0, " " + ph["name"], transform=ax.get_xaxis_transform(), va="top", fontsize=7)


def plot_latency(ax, trace: list[dict], phases: list[dict], title: str) -> None:
    """Latency and deadline over time (s since streaming started), phases shaded."""
    t = [r["t_s"] for r in trace]
    ax.plot(t, [r["latency_ms"] for r in trace], label="latency ms", color="tab:blue", lw=1)
    ax.step(t, [r["deadline_ms"] for r in trace], "--", where="post", label="deadline ms", color="tab:red")
    shade_phases(ax, phases, t[-1] if t else 1.0)
    top = 3.0 * max((r["deadline_ms"] for r in trace), default=0.0)
    peak = max((r["latency_ms"] for r in trace), default=0.0)
    if 0.0 < top < peak:                  # keep the deadline readable: spikes are clipped, their peak named
        ax.set_ylim(0.0, top)
        ax.text(1.0, 1.0, f"clipped: peak {peak:.0f} ms ", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    ax.set(xlabel="time (s)", ylabel="ms", title=title)
    ax.legend(fontsize=7, loc="upper left")


def plot_points(ax, trace: list[dict], phases: list[dict], order: list[str], title: str = "") -> None:
    """Operating point (rank, named on the axis; token budget without names) and tokens in the encoder."""
    t = [r["t_s"] for r in trace]
    ax.step(t, [r["point_rank"] for r in trace], where="post", color="tab:green",
            label="operating point" if order else "token budget")
    if order:
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(-0.5, len(order) - 0.5)
    ax.set(xlabel="time (s)", ylabel="operating point" if order else "token budget", title=title)
    ax2 = ax.twinx()
    ax2.plot(t, [r["tokens_in_encoder"] for r in trace], ":", color="tab:olive", label="tokens in encoder")
    ax2.set_ylabel("tokens in encoder")
    shade_phases(ax, phases, t[-1] if t else 1.0)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower left")


def plot(summary: dict, state: DemoState, clouds: dict[int, np.ndarray], trace: list[dict], path: Path) -> None:
    """Top view of the last labelled frame (clouds: stamp -> xyz), latency / deadline and operating
    point / tokens over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from foundry_core.runtime.predictor import label_colors
    fig, ax = plt.subplots(1, 3, figsize=(19, 5.5), gridspec_kw={"width_ratios": [1.1, 1, 1]})
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
    plot_latency(ax[1], trace, summary["phases"],
                 f"{summary['scenario']}: p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
                 f"hit rate {100 * summary['hit_rate_after_10']:.0f} % ({summary['backend']})")
    plot_points(ax[2], trace, summary["phases"], summary["operating_points"], "operating point and tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ================================================================================================
# the node, the scenario's events

def start_node(env: dict, out: Path, model: str, topic: str, extra_params: list[str],
               scenario_params: dict | None = None) -> subprocess.Popen:
    overrides = out / "node_overrides.yaml"
    params = {"input_topics": [topic], "qos_reliability": "reliable", **(scenario_params or {})}
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


def model_point_names(model: str) -> list[str]:
    """Operating point names of the model's metadata (the .json copy next to it), cheapest first."""
    if not model:
        from foundry_core.weights import DEFAULT_MODEL
        model = str(DEFAULT_MODEL)
    try:
        meta = json.loads(Path(model).with_suffix(".json").read_text())
        return [str(op["name"]) for op in meta.get("operating_points") or []]
    except (OSError, ValueError, KeyError, TypeError):
        return []


class ScenarioDriver:
    """Fires a scenario's events at their times on a thread: deadline changes through the node's
    parameter service, the CPU hog (killed in stop(), whatever happened)."""

    def __init__(self, scenario: S.Scenario, duration_s: float, node) -> None:
        self.scenario = scenario
        self.duration_s = float(duration_s)
        self.fired: list[dict] = []
        self.hog: CpuHog | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._client = None
        if scenario.uses_parameter_service:
            from rcl_interfaces.srv import SetParameters
            self._client = node.create_client(SetParameters, SET_PARAMETERS_SERVICE)

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        return self._client is None or self._client.wait_for_service(timeout_sec=timeout_s)

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread = threading.Thread(target=self._run, name="scenario-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.hog is not None:
            self.hog.stop()

    def event_times(self) -> list[float]:
        """Actual times of the events (s since streaming started); planned times for those not fired."""
        planned = self.scenario.planned_times(self.duration_s)
        return [self.fired[i]["t_s"] if i < len(self.fired) else t for i, t in enumerate(planned)]

    def _say(self, text: str) -> None:
        print(f"[demo] t {time.monotonic() - self._t0:5.1f} s  {text}", flush=True)

    def _run(self) -> None:
        for event, due in zip(self.scenario.events, self.scenario.planned_times(self.duration_s)):
            if self._stop.wait(max(0.0, self._t0 + due - time.monotonic())):
                return
            record = {"kind": event.kind, "value": event.value, "planned_s": due,
                      "t_s": time.monotonic() - self._t0}
            self.fired.append(record)
            getattr(self, "_" + event.kind)(event, record)

    def _deadline(self, event: S.Event, record: dict) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        req = SetParameters.Request(parameters=[Parameter("deadline_ms", Parameter.Type.DOUBLE,
                                                          float(event.value)).to_parameter_msg()])
        record["accepted"] = None

        def done(future) -> None:
            res = future.result()
            record["accepted"] = bool(res is not None and res.results and res.results[0].successful)
            self._say(f"deadline_ms -> {event.value:.1f} ({'accepted' if record['accepted'] else 'REJECTED'})")

        self._client.call_async(req).add_done_callback(done)

    def _hog_start(self, event: S.Event, record: dict) -> None:
        start, stop = self.scenario.hog_window_s(self.duration_s)
        self.hog = CpuHog(seconds=stop - start + 2.0).start()       # bounded by itself too
        record.update(core=self.hog.core, pid=self.hog.pid)
        self._say(f"cpu hog started on core {self.hog.core} (pid {self.hog.pid}, at most {self.hog.seconds:.0f} s)")

    def _hog_stop(self, event: S.Event, record: dict) -> None:
        if self.hog is not None:
            self.hog.stop()
        self._say("cpu hog stopped")


# ================================================================================================
# main

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="foundry-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=S.SCENARIO_CHOICES, default="steady",
                    help="steady (default), deadline-step, cpu-hog, or all three in sequence")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of streaming per scenario (default 30)")
    ap.add_argument("--rate", type=float, default=10.0, help="simulated sensor rate in Hz")
    ap.add_argument("--frames", type=int, default=60, help="simulated frames generated (looped)")
    ap.add_argument("--beams", type=int, help="simulated LiDAR beams (default 32)")
    ap.add_argument("--azimuth-samples", type=int, help="simulated LiDAR azimuth samples per beam (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bag", help="play this rosbag2 (sqlite3 / MCAP) instead of the simulated stream")
    ap.add_argument("--topic", help="PointCloud2 topic of the bag to play (default: its first)")
    ap.add_argument("--live", metavar="TOPIC", help="no stream: the node listens to this live topic")
    ap.add_argument("--model", default="", help="model file (default: the shipped default model)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="extra node parameter")
    ap.add_argument("--out", default="runs/demo", help="output folder (demo.json, frames.json, demo.png, node.log)")
    ap.add_argument("--quiet", action="store_true", help="no line per frame")
    return ap.parse_args(argv)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)     # like Ctrl-C: the node and the hog are stopped on the way out
    names = S.scenario_names(args.scenario)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dds.ros_env(workdir=out / "ros")
    dds.apply_in_process(env)                 # before rclpy is imported / initialised
    topic = args.live or INPUT_TOPIC
    frames = None
    if not args.bag and not args.live:
        print(f"[demo] generating {args.frames} simulated LiDAR sweeps ...", flush=True)
        frames = sim_stream(args.frames, args.seed, args.rate, args.beams, args.azimuth_samples)
    summaries: dict[str, dict] = {}
    rc = 0
    try:
        for name in names:
            scenario = S.SCENARIOS[name]
            sc_out = out if len(names) == 1 else out / name
            sc_out.mkdir(parents=True, exist_ok=True)
            if len(names) > 1 or name != "steady":
                print(f"[demo] ===== scenario {name}: {scenario.description} =====", flush=True)
            code, summary = run_scenario(args, scenario, sc_out, env, frames, topic)
            rc = rc or code
            if summary is not None:
                summaries[name] = summary
    except KeyboardInterrupt:
        print("[demo] interrupted", flush=True)
        return 130
    if len(names) > 1:
        (out / "scenarios.json").write_text(json.dumps(summaries, indent=1))
        print_scenario_table(summaries, out / "scenarios.json")
    return rc


def run_scenario(args, scenario: S.Scenario, out: Path, env: dict, frames, topic: str) -> tuple[int, dict | None]:
    node_proc = start_node(env, out, args.model, topic, args.param, scenario.params)
    print(f"[demo] node started (pid {node_proc.pid}, log {out / 'node.log'}); DDS domain {env['ROS_DOMAIN_ID']}, "
          "loopback only", flush=True)
    try:
        return run_client(args, scenario, out, node_proc, frames, topic)
    finally:
        stop_process(node_proc, timeout=10)
        dds.remove_stale_shm_segments()


def run_client(args, scenario: S.Scenario, out: Path, node_proc: subprocess.Popen, frames,
               topic: str) -> tuple[int, dict | None]:
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
        r = {k: getattr(m, k) for k in REPORT_FIELDS}
        r["operating_point"] = str(getattr(m, "operating_point", "") or "")
        r["stamp"] = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        r["t_s"] = time.monotonic() - state.t0
        with state.lock:
            state.reports.append(r)
        if not args.quiet:
            ok = "ok  " if r["latency_ms"] <= r["deadline_ms"] else "MISS"
            print(f"[demo] frame {r['frame_index']:4d}  latency {r['latency_ms']:6.1f} ms / deadline "
                  f"{r['deadline_ms']:5.1f} ms {ok}  budget {r['token_budget']:4d}  tokens {r['tokens_in_encoder']:4d}"
                  f"  points {r['points_in']:6d}  {r['backend']}  {r['operating_point']}".rstrip(), flush=True)

    def on_segments(m):
        d = decode_pointcloud2(m, extra=("label",))
        lab = np.full(d.num_input, -1, np.int16)
        lab[d.index] = d.extra["label"].astype(np.int16).reshape(-1)
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
    driver = ScenarioDriver(scenario, args.duration, node)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=spin_until_shutdown, args=(ex,), daemon=True)
    spin.start()
    try:
        if not wait_for_node(node, node_proc, pub, out):
            return 1, None
        if not driver.wait_ready(30.0):
            print(f"[demo] the node's parameter service {SET_PARAMETERS_SERVICE} did not come up", flush=True)
            return 1, None
        time.sleep(1.0)
        print(f"[demo] streaming for {args.duration:.0f} s", flush=True)
        state.t0 = time.monotonic()
        driver.start(state.t0)
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
        driver.stop()                   # the hog is off before the last frames drain
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and len(state.reports) < max(1, len(truth)) and frames is not None:
            time.sleep(0.1)
    finally:
        driver.stop()
        ex.shutdown()
        spin.join(timeout=5.0)      # no callback may run while the summary reads what they collected
        node.destroy_node()
        rclpy.shutdown()
    with state.lock:                # new names: a callback still in flight after the join writes to the originals
        got = DemoState(reports=list(state.reports), labels=dict(state.labels), label_names=list(state.label_names))
        last_clouds = dict(clouds)
    num_classes = max(len(got.label_names), 1 + max((int(v.max()) for v in got.labels.values()), default=0))
    source = "simulated LiDAR stream" if frames is not None else (f"bag {args.bag}" if args.bag else f"live {topic}")
    table = S.parse_operating_points((out / "node.log").read_text(errors="replace"))
    order = [row["name"] for row in table] or model_point_names(args.model)
    summary, trace = summarize(got, truth, num_classes, source, scenario, driver.event_times(), order, driver.fired)
    summary["calibration"] = table
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    (out / "frames.json").write_text(json.dumps(trace))
    if last_clouds:
        stamp = max(last_clouds)
        np.savez_compressed(out / "last_frame.npz", xyz=last_clouds[stamp], labels=got.labels[stamp],
                            names=np.array(got.label_names))
    plot(summary, got, last_clouds, trace, out / "demo.png")
    print_summary(summary, out)
    return (0 if summary["frames"] > 0 else 1), summary


def spin_until_shutdown(ex) -> None:
    """ex.spin() that ends quietly when the context is shut down (Ctrl-C: rclpy's handler shuts it down)."""
    from rclpy.executors import ExternalShutdownException
    try:
        ex.spin()
    except ExternalShutdownException:
        pass


def wait_for_node(node, node_proc: subprocess.Popen, pub, out: Path, timeout_s: float = 180.0) -> bool:
    """Wait until the node publishes reports (and subscribes to the stream); False if it exits or times out."""
    print("[demo] waiting for the node (model load, calibration; the first start also exports it to ONNX) ...",
          flush=True)
    t0 = time.monotonic()
    while node.count_publishers("/foundry/report") == 0 or (pub is not None and pub.get_subscription_count() == 0):
        if node_proc.poll() is not None:
            print(f"[demo] the node exited with code {node_proc.returncode}; see {out / 'node.log'}:", flush=True)
            print("".join((out / "node.log").read_text().splitlines(True)[-15:]), flush=True)
            return False
        if time.monotonic() - t0 > timeout_s:
            print(f"[demo] the node did not come up within {timeout_s:.0f} s", flush=True)
            return False
        time.sleep(0.1)
    return True


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


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _frames(v: int | None, what: str) -> str:
    return f"never {what}" if v is None else f"{what} after {v} frames"


def scenario_lines(s: dict) -> list[str]:
    """The scenario's own results in words (none for steady)."""
    lines = []
    if "step_frame" in s:
        lines.append(f"deadline step at frame {s['step_frame']}: {_frames(s['settle_frames'], 'settled')} "
                     f"(within the deadline for {S.SETTLE_HOLD} frames), hit rate after settling "
                     f"{_pct(s['hit_rate_after_settle'])}")
    if "hog_start_frame" in s:
        lines.append(f"cpu hog from frame {s['hog_start_frame']} to {s['hog_stop_frame']}: "
                     f"{_frames(s['settle_frames'], 'settled')}, hit rate after settling "
                     f"{_pct(s['hit_rate_after_settle'])}; {_frames(s['recover_frames'], 'back')} at the "
                     f"point held before the hog ({s['top_point']}) after it ended")
    return lines


def print_summary(s: dict, out: Path) -> None:
    print("[demo] ---------------------------------------------------------------", flush=True)
    print(f"[demo] {s['frames']} frames from {s['source']} on {s['backend']}: latency p50 {s['p50_ms']:.1f} ms, "
          f"p95 {s['p95_ms']:.1f} ms; deadline {s['deadline_ms']:.0f} ms met on {100 * s['hit_rate_after_10']:.1f} % "
          f"of frames after the first 10 ({100 * s['hit_rate_after_10_all_frames']:.1f} % counting the "
          f"{s['frames_dropped_stale']} clouds superseded as misses); mean token budget {s['mean_budget']:.0f}",
          flush=True)
    print("[demo] node stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_ms_median"].items()),
          flush=True)
    if s["point_histogram"]:
        print("[demo] operating points (frames): " + ", ".join(f"{k} {v}" for k, v in s["point_histogram"].items()),
              flush=True)
    if s["miou"] is not None:
        print(f"[demo] mIoU vs simulator ground truth {s['miou']:.1f} % (mean per frame {s['mean_miou']:.1f} %; "
              f"all-ground baseline {s['baseline_miou']:.1f} %)", flush=True)
    total = max(1, sum(s["label_histogram"].values()))
    print("[demo] labels: " + ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in s["label_histogram"].items() if v),
          flush=True)
    for line in scenario_lines(s):
        print(f"[demo] {s['scenario']}: {line}", flush=True)
    print(f"[demo] summary: {out / 'demo.json'}   frames: {out / 'frames.json'}   picture: {out / 'demo.png'}",
          flush=True)


def print_scenario_table(summaries: dict[str, dict], path: Path) -> None:
    print("[demo] =============================================================== all scenarios", flush=True)
    for name, s in summaries.items():
        miou = "n/a" if s["mean_miou"] is None else f"{s['mean_miou']:.1f} %"
        print(f"[demo] {name:14s} frames {s['frames']:4d}  hit rate after 10 {_pct(s['hit_rate_after_10']):>7s}  "
              f"p95 {s['p95_ms']:6.1f} ms  mean mIoU {miou}", flush=True)
        for line in scenario_lines(s):
            print(f"[demo] {'':14s} {line}", flush=True)
    print(f"[demo] all summaries: {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
