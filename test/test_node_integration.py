"""The Foundry node in its own process (FakePredictor), driven over real DDS from this process.

One node process serves the whole module (start-up is the expensive part); the tests run in file
order and the last one stops it with SIGINT. Every wait spins until a condition holds (match
counts, a message with the right stamp, a diagnostics counter), never a fixed sleep. Inputs are
best-effort on the node's side (its default), so a publication is repeated if its output does not
come back within RETRY_S.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
msgs = pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("diagnostic_msgs.msg")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from foundry_ros import dds  # noqa: E402
from foundry_ros.process import stop_process  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from fake_predictor import FAIL_X, FakePredictor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 20.0
RETRY_S = 1.0
TOPIC = "/test/points"
OVERRIDES = f"""
foundry:
  ros__parameters:
    input_topics: ["{TOPIC}"]
    extra_fields: ["intensity"]
    deadline_ms: 200.0
    max_age_s: 2.0
    min_budget: 64
    max_budget: 8192
    initial_budget: 1024
    publish_embeddings: true
    diagnostics_period_s: 0.2
"""


# ------------------------------------------------------------------------------------------------
# clouds


def make_cloud(xyz: np.ndarray, intensity: np.ndarray, height: int, width: int, frame_id: str = "lidar",
               row_pad: int = 0, drop_z: bool = False, truncate: int = 0) -> PointCloud2:
    """PointCloud2 with x, y, z, 4 padding bytes, intensity (point_step 20) and optional row padding."""
    names = ["x", "y"] + ([] if drop_z else ["z"]) + ["intensity"]
    offsets = {"x": 0, "y": 4, "z": 8, "intensity": 16}
    dt = np.dtype({"names": names, "formats": ["<f4"] * len(names), "offsets": [offsets[n] for n in names],
                   "itemsize": 20})
    rows = np.zeros((height, width), dt)
    grid = xyz.reshape(height, width, 3)
    rows["x"], rows["y"] = grid[..., 0], grid[..., 1]
    if not drop_z:
        rows["z"] = grid[..., 2]
    rows["intensity"] = intensity.reshape(height, width)
    row_step = width * 20 + row_pad
    buf = bytearray(height * row_step)
    for r in range(height):
        buf[r * row_step:r * row_step + width * 20] = rows[r].tobytes()
    if truncate:
        buf = buf[:-truncate]
    msg = PointCloud2(height=height, width=width, is_bigendian=False, point_step=20, row_step=row_step,
                      is_dense=False)
    msg.header.frame_id = frame_id
    msg.fields = [PointField(name=n, offset=offsets[n], datatype=PointField.FLOAT32, count=1) for n in names]
    msg.data = bytes(buf)
    return msg


def random_cloud(n: int, nan_rows=(), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-5, 5, (n, 3)).astype(np.float32)
    for i, r in enumerate(nan_rows):
        xyz[r, i % 3] = (np.nan, np.inf, -np.inf)[i % 3]
    intensity = (np.arange(n) % 7).astype(np.float32)
    return xyz, intensity


def parse_output(msg: PointCloud2) -> dict[str, np.ndarray]:
    types = {PointField.FLOAT32: "<f4", PointField.INT32: "<i4", PointField.UINT32: "<u4"}
    dt = np.dtype({"names": [f.name for f in msg.fields], "formats": [types[f.datatype] for f in msg.fields],
                   "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    assert not msg.is_bigendian and msg.row_step == msg.width * msg.point_step
    assert len(msg.data) == msg.height * msg.row_step
    arr = np.frombuffer(bytes(msg.data), dt)
    return {name: arr[name] for name in dt.names}


def expected_outputs(xyz: np.ndarray, intensity: np.ndarray) -> dict[str, np.ndarray]:
    valid = np.isfinite(xyz).all(axis=1)
    return {"valid": valid,
            "label": np.where(valid, (xyz[:, 0] > 0).astype(np.int32), -1),
            "confidence": np.where(valid, np.where(xyz[:, 0] > 0, 0.9, 0.6), 0.0).astype(np.float32),
            "segment": np.where(valid, np.rint(intensity).astype(np.int32), -1)}


def check_aligned(out_msg: PointCloud2, in_msg: PointCloud2, xyz: np.ndarray, intensity: np.ndarray) -> None:
    assert out_msg.header == in_msg.header  # stamp and frame_id of the input
    assert (out_msg.height, out_msg.width) == (in_msg.height, in_msg.width)
    assert [f.name for f in out_msg.fields] == ["x", "y", "z", "label", "confidence", "segment"]
    assert [f.datatype for f in out_msg.fields] == [PointField.FLOAT32] * 3 + [
        PointField.INT32, PointField.FLOAT32, PointField.INT32]
    out = parse_output(out_msg)
    exp = expected_outputs(xyz, intensity)
    valid = exp["valid"]
    assert len(out["label"]) == len(xyz)
    np.testing.assert_array_equal(out["label"], exp["label"])
    np.testing.assert_array_equal(out["segment"], exp["segment"])
    np.testing.assert_allclose(out["confidence"], exp["confidence"], rtol=1e-6)
    got_xyz = np.stack([out["x"], out["y"], out["z"]], axis=1)
    np.testing.assert_array_equal(got_xyz[valid], xyz[valid])
    assert np.isnan(got_xyz[~valid]).all()
    assert out_msg.is_dense == bool(valid.all())


# ------------------------------------------------------------------------------------------------
# harness


class Harness:
    def __init__(self, child: subprocess.Popen, log: Path, ctx: Context) -> None:
        self.child, self.log, self.ctx = child, log, ctx
        self.node = rclpy.create_node("foundry_test_client", context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(PointCloud2, TOPIC, QoSProfile(depth=5,
                                              reliability=ReliabilityPolicy.RELIABLE))
        self.segments: dict[tuple, PointCloud2] = {}
        self.reports: dict[tuple, object] = {}
        self.report_list: list = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.embeddings: list = []
        self.labels: list = []
        self.subs = [
            self.node.create_subscription(PointCloud2, "/foundry/segments",
                                          lambda m: self.segments.__setitem__(self._key(m.header), m), reliable),
            self.node.create_subscription(msgs.InferenceReport, "/foundry/report", self._on_report, reliable),
            self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                          lambda m: self.diagnostics.extend(m.status), reliable),
            self.node.create_subscription(msgs.TokenEmbeddings, "/foundry/embeddings", self.embeddings.append,
                                          reliable),
        ]
        self._ns = 0

    @staticmethod
    def _key(header: Header) -> tuple:
        return (header.stamp.sec, header.stamp.nanosec, header.frame_id)

    def _on_report(self, m) -> None:
        self.reports[self._key(m.header)] = m
        self.report_list.append(m)

    def wait(self, predicate, what: str, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.child.poll() is not None:
                raise AssertionError(f"node exited ({self.child.returncode}) while waiting for {what}:\n"
                                     f"{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.ex.spin_once(timeout_sec=0.02)

    def stamp(self, age_s: float = 0.0) -> Time:
        now = self.node.get_clock().now().nanoseconds - int(age_s * 1e9)
        self._ns += 1
        now += self._ns  # unique even if the clock did not move
        return Time(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)

    def publish_until(self, msg: PointCloud2, predicate, what: str, age_s: float = 0.0,
                      timeout: float = TIMEOUT_S) -> list[tuple]:
        """Publish msg with a fresh stamp (again every RETRY_S: best-effort input) until predicate(keys).

        Returns the header keys of all publications (a repeat gets a new stamp, so that it is not
        dropped as too old).
        """
        deadline = time.monotonic() + timeout
        keys: list[tuple] = []
        while True:
            msg.header.stamp = self.stamp(age_s)
            keys.append(self._key(msg.header))
            self.pub.publish(msg)
            try:
                self.wait(lambda: predicate(keys), what, timeout=min(RETRY_S, max(deadline - time.monotonic(), 0.1)))
                return keys
            except AssertionError:
                if self.child.poll() is not None or time.monotonic() > deadline:
                    raise

    def roundtrip(self, msg: PointCloud2):
        """Publish msg (fresh stamp); return (segments, report, publications) of the frame."""
        def done(keys):
            return any(k in self.segments and k in self.reports for k in keys)

        keys = self.publish_until(msg, done, "outputs of a published cloud")
        key = next(k for k in reversed(keys) if k in self.segments and k in self.reports)
        msg.header.stamp = Time(sec=key[0], nanosec=key[1])  # the header the outputs must carry
        return self.segments[key], self.reports[key], len(keys)

    def last_diag(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diagnostics[-1].values} if self.diagnostics else {}

    def diag_count(self, key: str) -> int:
        return int(self.last_diag().get(key, "0"))

    def set_params(self, **values):
        from rclpy.parameter_client import AsyncParameterClient

        client = AsyncParameterClient(self.node, "foundry")
        assert client.wait_for_services(timeout_sec=TIMEOUT_S), "parameter services of /foundry"
        fut = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        self.ex.spin_until_future_complete(fut, timeout_sec=TIMEOUT_S)
        assert fut.done(), "set_parameters did not answer"
        return fut.result().results


@contextlib.contextmanager
def node_harness(tmp: Path, node_argv: list[str], overrides: str):
    """Start a node process (node_argv after the interpreter) on loopback-only DDS with the shipped
    config plus `overrides` (params-file text); yield a Harness once everything is matched."""
    env = dds.ros_env(workdir=tmp / "ros")
    overrides_path = tmp / "overrides.yaml"
    overrides_path.write_text(overrides)
    log = tmp / "node.log"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in dds.ros_overrides(env).items():
            mp.setenv(key, value)
        for key in dds.REMOVED_KEYS + (dds.LEGACY_PROFILE_VAR,):
            mp.delenv(key, raising=False)
        with open(log, "w") as log_f:
            child = subprocess.Popen(
                [sys.executable, *node_argv,
                 "--params-file", str(ROOT / "config" / "foundry.yaml"), "--params-file", str(overrides_path)],
                env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT)
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        harness = None
        try:
            harness = Harness(child, log, ctx)
            harness.wait(lambda: harness.pub.get_subscription_count() > 0, "the node's input subscription")
            harness.wait(lambda: all(s.get_publisher_count() > 0 for s in harness.subs[:3]),
                         "the node's publishers")
            yield harness
        finally:
            stop_process(child, timeout=10)
            if harness is not None:
                harness.ex.shutdown()
                harness.node.destroy_node()
            rclpy.shutdown(context=ctx)
    dds.remove_stale_shm_segments()


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    with node_harness(tmp_path_factory.mktemp("foundry_node"), [str(ROOT / "test" / "foundry_node_fake.py")],
                      OVERRIDES) as harness:
        yield harness


# ------------------------------------------------------------------------------------------------
# tests (file order matters: one node process)


def test_unorganised_cloud_with_nans_is_index_aligned(h):
    xyz, intensity = random_cloud(50, nan_rows=(3, 17, 18, 40), seed=1)
    msg = make_cloud(xyz, intensity, 1, 50, frame_id="lidar_front")
    seg, report, _ = h.roundtrip(msg)
    check_aligned(seg, msg, xyz, intensity)
    assert report.header == msg.header
    assert report.points_in == 46 and report.points_used == 46 and report.points_dropped == 0
    assert report.backend == FakePredictor.backend and report.model_hash == FakePredictor.model_hash
    assert 0 < report.tokens_in_encoder <= report.token_budget
    assert report.deadline_ms == pytest.approx(200.0)
    assert report.latency_ms > 0 and report.encode_ms > 0
    stages = report.preprocess_ms + report.tokenize_ms + report.encode_ms + report.head_ms + report.publish_ms
    assert stages <= report.latency_ms + 1e-3


def test_organised_cloud_keeps_its_layout(h):
    xyz, intensity = random_cloud(80, nan_rows=(0, 9, 10, 41, 42, 43, 79), seed=2)
    msg = make_cloud(xyz, intensity, 8, 10, frame_id="depth_camera", row_pad=8)
    seg, report, _ = h.roundtrip(msg)
    check_aligned(seg, msg, xyz, intensity)
    labels = parse_output(seg)["label"].reshape(8, 10)
    assert labels[0, 0] == -1 and labels[4, 1] == -1 and labels[7, 9] == -1
    assert report.points_in == 73


def test_empty_and_all_invalid_clouds_give_empty_aligned_outputs(h):
    empty = make_cloud(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), 1, 0)
    seg, report, _ = h.roundtrip(empty)
    assert (seg.height, seg.width, len(seg.data)) == (1, 0, 0)
    assert len(seg.fields) == 6 and report.points_in == 0 and report.tokens_in_encoder == 0
    xyz = np.full((6, 3), np.nan, np.float32)
    invalid = make_cloud(xyz, np.zeros(6, np.float32), 2, 3)
    seg, report, _ = h.roundtrip(invalid)
    check_aligned(seg, invalid, xyz, np.zeros(6, np.float32))
    assert report.points_in == 0


def test_label_map_reaches_a_late_joiner(h):
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.node.create_subscription(msgs.LabelMap, "/foundry/labels", h.labels.append, latched)
    h.wait(lambda: h.labels, "the transient-local LabelMap")
    m = h.labels[0]
    assert m.model_hash == FakePredictor.model_hash
    assert [(e.id, e.name) for e in m.entries] == [(0, "x_not_positive"), (1, "x_positive")]
    assert (m.entries[1].color.g, m.entries[1].color.a) == (1.0, 1.0)


def test_embeddings_published_while_subscribed(h):
    h.wait(lambda: h.subs[3].get_publisher_count() > 0, "the embeddings publisher")
    xyz, intensity = random_cloud(40, seed=3)
    msg = make_cloud(xyz, intensity, 1, 40)
    h.roundtrip(msg)
    key = h._key(msg.header)  # roundtrip left the stamp of the answered publication in msg
    h.wait(lambda: any(h._key(e.header) == key for e in h.embeddings), "TokenEmbeddings of the frame")
    emb = [e for e in h.embeddings if h._key(e.header) == key][0]
    assert emb.num_tokens == 32 and emb.embedding_dim == 8
    assert len(emb.features) == 32 * 8 and len(emb.centers_xyz) == 32 * 3 and len(emb.segment_of_token) == 32
    assert emb.model_hash == FakePredictor.model_hash


def test_malformed_failing_and_stale_clouds_are_survived(h):
    xyz, intensity = random_cloud(30, seed=4)
    h.wait(lambda: h.diagnostics, "a diagnostics message")
    cases = [
        (make_cloud(xyz, intensity, 1, 30, drop_z=True), 0.0, "decode_errors", 1),  # no z field
        (make_cloud(xyz, intensity, 1, 30, truncate=7), 0.0, "decode_errors", 2),  # truncated data
        (make_cloud(np.where(np.arange(30)[:, None] == 5, FAIL_X, xyz).astype(np.float32), intensity, 1, 30),
         0.0, "predictor_errors", 1),  # the predictor raises
        (make_cloud(xyz, intensity, 1, 30), 10.0, "frames_dropped_age", 1),  # 10 s old > max_age_s
    ]
    saw_error_level = False
    for bad, age, counter, expected in cases:
        h.publish_until(bad, lambda keys: h.diag_count(counter) >= expected, f"diagnostics {counter} >= {expected}",
                        age_s=age)
        if counter == "predictor_errors":
            h.wait(lambda: h.diagnostics[-1].level == DiagnosticStatus.ERROR, "ERROR status after the failure")
            saw_error_level = "predictor failed" in h.diagnostics[-1].message
    assert saw_error_level
    # the node is alive and the next good cloud is processed normally
    good = make_cloud(xyz, intensity, 1, 30)
    seg, report, _ = h.roundtrip(good)
    check_aligned(seg, good, xyz, intensity)
    h.wait(lambda: h.diagnostics[-1].level != DiagnosticStatus.ERROR, "status back from ERROR")
    diag = h.last_diag()
    assert diag["backend"] == FakePredictor.backend and float(diag["latency_p95_ms"]) > 0
    assert int(diag["decode_errors"]) >= 2 and int(diag["predictor_errors"]) >= 1


def _run_frames(h, n: int, until=None) -> list:
    xyz, intensity = random_cloud(64, seed=5)
    out = []
    for _ in range(n):
        _, report, _ = h.roundtrip(make_cloud(xyz, intensity, 1, 64))
        out.append(report)
        if until is not None and until(out):
            break
    return out


def test_parameter_changes_are_validated_and_move_the_budget(h):
    # rejected, with a reason
    [res] = h.set_params(min_budget=9000)
    assert not res.successful and "max_budget" in res.reason
    [res] = h.set_params(model_path="/elsewhere.pt")
    assert not res.successful and "read-only" in res.reason.lower()
    [res] = h.set_params(deadline_ms=-5.0)
    assert not res.successful

    # deadline 200 ms: the fake costs ~1 ms + 4 us/token, the budget grows from 1024 towards 8192
    reports = _run_frames(h, 12, until=lambda r: len(r) >= 3 and r[-1].token_budget >= 4096)
    high = reports[-1].token_budget
    assert high > 1024, [r.token_budget for r in reports]

    # a tight deadline: the budget must come down on the following reports
    [res] = h.set_params(deadline_ms=6.0)
    assert res.successful, res.reason
    reports = _run_frames(h, 25, until=lambda r: r[-1].token_budget < high // 2)
    assert all(r.deadline_ms == pytest.approx(6.0) for r in reports)
    low = reports[-1].token_budget
    assert low < high // 2, [r.token_budget for r in reports]

    # a loose deadline: back up
    [res] = h.set_params(deadline_ms=1000.0)
    assert res.successful, res.reason
    reports = _run_frames(h, 25, until=lambda r: r[-1].token_budget > 2 * low)
    assert reports[-1].token_budget > 2 * low, [r.token_budget for r in reports]
    assert reports[-1].deadline_ms == pytest.approx(1000.0)


def test_large_clouds_best_effort_over_shared_memory(h):
    """120k-point clouds reach the best-effort input (64 MiB shared-memory profile of foundry_ros.dds)."""
    n = 120_000
    xyz, intensity = random_cloud(n, nan_rows=(0, 1000, 99_999), seed=6)
    msg = make_cloud(xyz, intensity, 1, n)
    sent_total = 0
    for _ in range(3):
        seg, report, sent = h.roundtrip(msg)
        sent_total += sent
        assert seg.width == n and report.points_in == n - 3
    check_aligned(seg, msg, xyz, intensity)
    assert sent_total <= 4, f"{sent_total} publications for 3 large clouds"


def test_clean_shutdown_on_sigint(h):
    h.child.send_signal(signal.SIGINT)
    assert h.child.wait(timeout=15) == 0
    log = h.log.read_text()
    assert "foundry node up" in log
    assert "skipping malformed PointCloud2" in log  # the first decode error is logged (then throttled)
    assert "predictor failed" in log and "dropping a cloud" in log
    assert "Traceback" not in log, log[-3000:]


def test_shipped_config_loads_and_invalid_start_parameters_fail_fast(tmp_path):
    """config/foundry.yaml as rcl reads it (e.g. `extra_fields: []` is NOT_SET) and start-up checks."""
    env = dds.ros_env(workdir=tmp_path / "ros")
    base = [sys.executable, str(ROOT / "test" / "foundry_node_fake.py"),
            "--params-file", str(ROOT / "config" / "foundry.yaml")]
    for extra, message in [
        (["--ros-args", "-p", "min_budget:=9000"], "min_budget (9000) must be <= max_budget (8192)"),
        ([], "the model needs 4 input channels"),  # the fake wants intensity, the shipped config gives xyz
    ]:
        out = subprocess.run(base + extra, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 1, out.stderr
        assert message in out.stderr, out.stderr
