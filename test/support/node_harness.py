"""A Foundry node process driven over real (local-only) DDS from the test process, and test clouds.

Import after ``pytest.importorskip("rclpy")`` and ``("foundry_msgs.msg")``: this module needs both.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from foundry_msgs.msg import InferenceReport, TokenEmbeddings
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from foundry_ros.process import stop_process
from support import REPO_ROOT
from support.ros_session import local_dds, ros_session, spin_until

TIMEOUT_S = 20.0
#: Start-up of a node process: model load, warm-up and, for a model with operating points, the
#: calibration of every point (``predictor.calibrate()``: ~10 s on a loaded 2-core CPU for the test model).
STARTUP_TIMEOUT_S = 120.0
RETRY_S = 1.0
TOPIC = "/test/points"
SHIPPED_CONFIG = REPO_ROOT / "config" / "foundry.yaml"

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
    """(xyz, intensity) of n points; the rows in nan_rows get a NaN / +Inf / -Inf coordinate."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-5, 5, (n, 3)).astype(np.float32)
    for i, r in enumerate(nan_rows):
        xyz[r, i % 3] = (np.nan, np.inf, -np.inf)[i % 3]
    intensity = (np.arange(n) % 7).astype(np.float32)
    return xyz, intensity


def parse_output(msg: PointCloud2) -> dict[str, np.ndarray]:
    """The fields of a ``foundry/segments`` cloud as arrays (checks its layout)."""
    types = {PointField.FLOAT32: "<f4", PointField.INT32: "<i4", PointField.UINT32: "<u4"}
    dt = np.dtype({"names": [f.name for f in msg.fields], "formats": [types[f.datatype] for f in msg.fields],
                   "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    assert not msg.is_bigendian and msg.row_step == msg.width * msg.point_step
    assert len(msg.data) == msg.height * msg.row_step
    arr = np.frombuffer(bytes(msg.data), dt)
    return {name: arr[name] for name in dt.names}


def expected_outputs(xyz: np.ndarray, intensity: np.ndarray) -> dict[str, np.ndarray]:
    """What the node with the FakePredictor must answer for a cloud (extra field: intensity)."""
    valid = np.isfinite(xyz).all(axis=1)
    return {"valid": valid,
            "label": np.where(valid, (xyz[:, 0] > 0).astype(np.int32), -1),
            "confidence": np.where(valid, np.where(xyz[:, 0] > 0, 0.9, 0.6), 0.0).astype(np.float32),
            "segment": np.where(valid, np.rint(intensity).astype(np.int32), -1)}


def check_aligned(out_msg: PointCloud2, in_msg: PointCloud2, xyz: np.ndarray, intensity: np.ndarray) -> None:
    """The segments cloud keeps the input's header and layout and has the FakePredictor's outputs."""
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
    """The test's side of a node process: an input publisher and subscriptions to all outputs."""

    def __init__(self, child: subprocess.Popen, log: Path, node: Any, ex: Any) -> None:
        self.child, self.log, self.node, self.ex = child, log, node, ex
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = node.create_publisher(PointCloud2, TOPIC, QoSProfile(depth=5,
                                         reliability=ReliabilityPolicy.RELIABLE))
        self.segments: dict[tuple, PointCloud2] = {}
        self.reports: dict[tuple, object] = {}
        self.report_list: list = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.embeddings: list = []
        self.subs = [
            node.create_subscription(PointCloud2, "/foundry/segments",
                                     lambda m: self.segments.__setitem__(self.key(m.header), m), reliable),
            node.create_subscription(InferenceReport, "/foundry/report", self._on_report, reliable),
            node.create_subscription(DiagnosticArray, "/diagnostics",
                                     lambda m: self.diagnostics.extend(m.status), reliable),
            node.create_subscription(TokenEmbeddings, "/foundry/embeddings", self.embeddings.append, reliable),
        ]
        self._ns = 0

    @staticmethod
    def key(header: Header) -> tuple:
        return (header.stamp.sec, header.stamp.nanosec, header.frame_id)

    def _on_report(self, m) -> None:
        self.reports[self.key(m.header)] = m
        self.report_list.append(m)

    def _exited(self) -> str | None:
        if self.child.poll() is None:
            return None
        return f"node exited ({self.child.returncode}):\n{self.log.read_text()[-3000:]}"

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> None:
        spin_until(self.ex, predicate, what, timeout, alive=self._exited)

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
            keys.append(self.key(msg.header))
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

    def fresh_diagnostics(self) -> None:
        """Wait for a diagnostics status published after this call."""
        n = len(self.diagnostics)
        self.wait(lambda: len(self.diagnostics) > n, "a new diagnostics message")

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
def node_harness(tmp: Path, node_argv: list[str], overrides: str) -> Iterator[Harness]:
    """Start a node process (node_argv after the interpreter) on loopback-only DDS with the shipped
    config plus `overrides` (params-file text); yield a Harness once everything is matched."""
    with node_process(tmp, node_argv, overrides) as (child, log):
        with ros_session("foundry_test_client") as (node, ex):
            harness = Harness(child, log, node, ex)
            harness.wait(lambda: harness.pub.get_subscription_count() > 0, "the node's input subscription",
                         timeout=STARTUP_TIMEOUT_S)
            harness.wait(lambda: all(s.get_publisher_count() > 0 for s in harness.subs[:3]),
                         "the node's publishers")
            yield harness


@contextlib.contextmanager
def node_process(tmp: Path, node_argv: list[str], overrides: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The node process (node_argv after the interpreter; shipped config plus ``overrides``, params-file
    text) and its log file, on loopback-only DDS that is also applied to this process while the block
    runs (for tests that wire their own topics, e.g. remapped ones); the process is stopped at the end."""
    overrides_path = tmp / "overrides.yaml"
    overrides_path.write_text(overrides)
    log = tmp / "node.log"
    with local_dds(tmp / "ros") as env:
        with open(log, "w") as log_f:
            child = subprocess.Popen(
                [sys.executable, *node_argv,
                 "--params-file", str(SHIPPED_CONFIG), "--params-file", str(overrides_path)],
                env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT)
        try:
            yield child, log
        finally:
            stop_process(child, timeout=10)
