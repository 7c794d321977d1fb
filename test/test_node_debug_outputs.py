"""The node's RViz debug outputs and its remappable, node-private topic names (FakePredictor).

The debug outputs are checked on a FoundryNode in this process (a private rclpy context on local-only
DDS), so that the builders of :mod:`foundry_ros.debug_outputs` can be counted; the remapping through
``--ros-args -r`` on a node process started like ``foundry-node``. Every wait spins until a condition
holds; an input publication (best-effort on the node's side) is repeated until its output arrives.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
msgs = pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("visualization_msgs.msg")

from foundry_msgs.msg import InferenceReport  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from foundry_ros import debug_outputs as D  # noqa: E402
from support import TEST_DIR  # noqa: E402
from support.fakes import FakePredictor  # noqa: E402
from support.node_harness import STARTUP_TIMEOUT_S, make_cloud, node_process, parse_output, random_cloud  # noqa: E402
from support.ros_session import local_dds, spin_until  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

IN_TOPIC = "/test/debug_points"
RETRY_S = 1.0
TIMEOUT_S = 20.0
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
GREY = (128, 128, 128)
RED, GREEN = (255, 0, 0), (0, 255, 0)  # FakePredictor.label_info(): 0 red (x <= 0), 1 green (x > 0)


def _key(header) -> tuple:
    return (header.stamp.sec, header.stamp.nanosec, header.frame_id)


def _publish_until(ex, clock, pub, msg, predicate, what: str) -> tuple:
    """Publish msg with a fresh stamp every RETRY_S until predicate(key) holds; return that key."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        msg.header.stamp = clock.now().to_msg()
        key = _key(msg.header)
        pub.publish(msg)
        try:
            spin_until(ex, lambda: predicate(key), what, timeout=RETRY_S)
            return key
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@contextlib.contextmanager
def _in_process_node(tmp_path):
    """(foundry node, test node, executor) in one private rclpy context on local-only DDS."""
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from foundry_ros.node import FoundryNode

    with local_dds(tmp_path / "ros"):
        ctx = Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        try:
            overrides = [Parameter("input_topics", value=[IN_TOPIC]), Parameter("extra_fields", value=["intensity"]),
                         Parameter("max_age_s", value=5.0)]
            node = FoundryNode(lambda *_: FakePredictor(in_channels=4), context=ctx, parameter_overrides=overrides)
            client = rclpy.create_node("foundry_debug_test", context=ctx)
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            ex.add_node(client)
            try:
                yield node, client, ex
            finally:
                ex.shutdown()
                client.destroy_node()
                node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)


def _counting(monkeypatch, name: str) -> list:
    calls: list = []
    real = getattr(D, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(D, name, wrapper)
    return calls


def test_debug_outputs_built_only_while_subscribed_and_coloured_by_the_label_map(tmp_path, monkeypatch):
    rgb_calls = _counting(monkeypatch, "segments_rgb_arrays")
    centre_calls = _counting(monkeypatch, "segment_centres")
    xyz, intensity = random_cloud(60, nan_rows=(2, 30, 31), seed=11)
    intensity[:20] = 3  # segment ids = rint(intensity): 0..6, with segment 3 holding many points
    msg = make_cloud(xyz, intensity, 6, 10, frame_id="lidar_debug")
    with _in_process_node(tmp_path) as (node, client, ex):
        pub = client.create_publisher(PointCloud2, IN_TOPIC, RELIABLE)
        segments: dict = {}
        client.create_subscription(PointCloud2, "/foundry/segments", lambda m: segments.__setitem__(_key(m.header), m),
                                   RELIABLE)
        spin_until(ex, lambda: pub.get_subscription_count() > 0, "the node's input subscription", TIMEOUT_S)

        # nobody subscribes to the debug topics: frames are processed, nothing debug is built
        _publish_until(ex, node.get_clock(), pub, msg, lambda k: k in segments, "segments without debug subscribers")
        assert rgb_calls == [] and centre_calls == []

        rgb: dict = {}
        markers: dict = {}
        client.create_subscription(PointCloud2, "/foundry/debug/segments_rgb",
                                   lambda m: rgb.__setitem__(_key(m.header), m), RELIABLE)
        client.create_subscription(MarkerArray, "/foundry/debug/supertokens",
                                   lambda m: markers.__setitem__(_key(m.markers[0].header), m), RELIABLE)
        key = _publish_until(ex, node.get_clock(), pub, msg, lambda k: k in rgb and k in markers,
                             "the debug outputs of a frame")
    assert rgb_calls and centre_calls

    cloud = rgb[key]
    assert _key(cloud.header) == key and (cloud.height, cloud.width) == (6, 10)
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("rgb", 12, PointField.FLOAT32)]
    assert cloud.point_step == 16 and cloud.row_step == 160 and not cloud.is_dense
    out = parse_output(cloud)
    colours = D.unpack_rgb(out["rgb"])
    valid = np.isfinite(xyz).all(axis=1)
    expected = np.where(valid[:, None], np.where((xyz[:, 0] > 0)[:, None], GREEN, RED), GREY)
    np.testing.assert_array_equal(colours, expected)
    got_xyz = np.stack([out["x"], out["y"], out["z"]], axis=1)
    np.testing.assert_array_equal(got_xyz[valid], xyz[valid])
    assert np.isnan(got_xyz[~valid]).all()

    [m] = markers[key].markers
    assert (m.type, m.action, m.ns) == (Marker.SPHERE_LIST, Marker.ADD, D.MARKER_NS)
    seg = np.rint(intensity).astype(int)
    ids = np.unique(seg[valid])
    centres = np.array([xyz[valid & (seg == i)].mean(axis=0) for i in ids])
    np.testing.assert_allclose([(p.x, p.y, p.z) for p in m.points], centres, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([(c.r, c.g, c.b, c.a) for c in m.colors], D.segment_colours(ids), rtol=1e-6)


def test_outputs_and_input_are_remappable_and_follow_the_namespace(tmp_path):
    """``--ros-args -r ~/segments:=... -r /in:=... -r __ns:=...`` as a user passes them to foundry-node."""
    argv = [str(TEST_DIR / "foundry_node_fake.py"), "--ros-args", "-r", "__ns:=/robot1",
            "-r", "~/segments:=/perception/segments", "-r", f"{IN_TOPIC}:=/test/remapped_points", "--"]
    # "/**/foundry": a plain "foundry" key (as in config/foundry.yaml) names /foundry only, not /robot1/foundry
    overrides = f"""
/**/foundry:
  ros__parameters:
    input_topics: ["{IN_TOPIC}"]
    extra_fields: ["intensity"]
    max_age_s: 5.0
    publish_embeddings: true
"""
    with node_process(tmp_path, argv, overrides) as (child, log):
        from support.ros_session import ros_session

        def exited():
            return None if child.poll() is None else f"node exited ({child.returncode}):\n{log.read_text()[-3000:]}"

        with ros_session("foundry_remap_test") as (client, ex):
            pub = client.create_publisher(PointCloud2, "/test/remapped_points", RELIABLE)
            segments: dict = {}
            reports: dict = {}
            client.create_subscription(PointCloud2, "/perception/segments",
                                       lambda m: segments.__setitem__(_key(m.header), m), RELIABLE)
            client.create_subscription(InferenceReport, "/robot1/foundry/report",
                                       lambda m: reports.__setitem__(_key(m.header), m), RELIABLE)
            spin_until(ex, lambda: pub.get_subscription_count() > 0, "the node's remapped input",
                       STARTUP_TIMEOUT_S, alive=exited)
            xyz, intensity = random_cloud(30, seed=12)
            key = _publish_until(ex, client.get_clock(), pub, make_cloud(xyz, intensity, 1, 30),
                                 lambda k: k in segments and k in reports, "remapped segments and the report")
            assert segments[key].width == 30

            expected = {"/perception/segments", "/robot1/foundry/report", "/robot1/foundry/labels",
                        "/robot1/foundry/embeddings", "/robot1/foundry/debug/segments_rgb",
                        "/robot1/foundry/debug/supertokens", "/diagnostics"}

            def published() -> set:
                try:
                    return {name for name, _ in client.get_publisher_names_and_types_by_node("foundry", "/robot1")}
                except Exception:  # the node is not in the graph cache yet
                    return set()

            spin_until(ex, lambda: expected <= published(), f"the node's publishers {sorted(expected)}",
                       TIMEOUT_S, alive=exited)
            assert not any(name.endswith("/foundry/segments") for name in published()), published()
            subscribed = {name for name, _ in client.get_subscriber_names_and_types_by_node("foundry", "/robot1")}
            assert "/test/remapped_points" in subscribed and IN_TOPIC not in subscribed, subscribed
