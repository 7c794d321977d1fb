"""foundry_ros.bag (rosbags, no ROS) and foundry_ros.bag_replay (player / recorder over DDS).

The first part needs only rosbags and numpy. The second part runs the ``foundry-bag`` CLI in a
child process and talks to it from this process, both on the local-only DDS environment of
foundry_ros.dds; it is skipped when the ROS 2 wheels or foundry_msgs are not installed.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from foundry_ros import bag, bag_replay
from foundry_ros.process import stop_process
from foundry_ros.pointcloud2 import decode_pointcloud2
from support import REPO_ROOT
from support.ros_session import TIMEOUT_S, local_dds, ros_session, spin_until

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")


# ------------------------------------------------------------------------------------------------
# ROS-free: writing and reading bags


def _clouds():
    rng = np.random.default_rng(7)
    a = rng.uniform(-5, 5, (40, 4)).astype(np.float32)  # x, y, z, intensity
    a[[2, 11], [0, 2]] = np.nan
    a[30, 1] = np.inf
    b = rng.uniform(-1, 1, (3, 4, 3)).astype(np.float32)  # organised, no intensity
    b[1, 2, 0] = np.nan
    c = rng.uniform(0, 1, (5, 4)).astype(np.float32)  # dense
    # out of time order on purpose: readers return bag-timestamp order
    return [(3_200_000_000, "/lidar", c, "lidar"), (1_000_000_000, "/lidar", a, "lidar"),
            (1_500_000_000, "/depth", b, "camera"), (2_000_000_123, "/lidar", a[:7], "lidar")]


def _check_cloud(m: bag.BagMessage, stamp_ns: int, topic: str, points: np.ndarray, frame_id: str) -> None:
    assert (m.topic, m.stamp_ns, m.msgtype) == (topic, stamp_ns, bag.POINTCLOUD2)
    msg = m.deserialize()
    assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == stamp_ns
    assert msg.header.frame_id == frame_id
    grid = points.reshape(-1, points.shape[-1])
    assert (msg.height, msg.width) == ((1, len(points)) if points.ndim == 2 else points.shape[:2])
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity"][: points.shape[-1]]
    assert all(f.datatype == 7 for f in msg.fields)  # FLOAT32
    finite = np.isfinite(grid[:, :3]).all(axis=1)
    assert msg.is_dense == bool(finite.all())
    decoded = decode_pointcloud2(msg, extra=("intensity",))
    np.testing.assert_array_equal(decoded.index, np.flatnonzero(finite))
    np.testing.assert_array_equal(decoded.xyz, grid[finite, :3])
    if points.shape[-1] == 4:
        np.testing.assert_array_equal(decoded.extra["intensity"], grid[finite, 3])
    else:
        assert "intensity" not in decoded.extra


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_and_read_back(tmp_path, storage):
    frames = _clouds()
    out = tmp_path / "bag"
    assert bag.write_pointcloud_bag(out, frames, storage=storage) == {"/lidar": 3, "/depth": 1}
    storage_file = out / f"bag.{'mcap' if storage == 'mcap' else 'db3'}"
    assert (out / "metadata.yaml").is_file() and storage_file.is_file()

    expected = sorted(frames, key=lambda f: f[0])
    for path in (out, storage_file):  # the directory, and the bare storage file
        assert bag.list_pointcloud_topics(path) == {"/lidar": 3, "/depth": 1}
        got = list(bag.iter_pointclouds(path))
        assert len(got) == len(expected)
        for m, (stamp, topic, points, frame_id) in zip(got, expected, strict=True):
            _check_cloud(m, stamp, topic, points, frame_id)

    only = list(bag.iter_pointclouds(out, topics=["/depth"]))
    assert [m.topic for m in only] == ["/depth"]
    with pytest.raises(bag.BagError, match=r"no topic\(s\).*'/nope'"):
        list(bag.iter_pointclouds(out, topics=["/nope"]))


def test_bag_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing_bag"
    with pytest.raises(bag.BagNotFoundError, match="missing_bag"):
        bag.list_pointcloud_topics(missing)
    with pytest.raises(FileNotFoundError):  # BagNotFoundError is one
        list(bag.iter_pointclouds(missing))

    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not an mcap file at all")
    with pytest.raises(bag.BagError, match="garbage.mcap"):
        list(bag.iter_pointclouds(garbage))
    not_sqlite = tmp_path / "garbage.db3"
    not_sqlite.write_bytes(b"\0" * 64)
    with pytest.raises(bag.BagError, match="garbage.db3"):
        bag.list_pointcloud_topics(not_sqlite)

    good = tmp_path / "truncated"
    bag.write_pointcloud_bag(good, _clouds())
    data = good / "truncated.mcap"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(bag.BagError, match="truncated"):
        list(bag.iter_pointclouds(good))

    with pytest.raises(bag.BagError, match="exists already"):
        bag.write_pointcloud_bag(good, _clouds())
    with pytest.raises(ValueError, match="columns"):
        bag.write_pointcloud_bag(tmp_path / "bad_points", [(0, "/p", np.zeros((4, 5), np.float32), "f")])
    assert not (tmp_path / "bad_points").exists()  # a failed write leaves no half bag


def test_set_header_stamp_rewrites_only_the_stamp(tmp_path):
    bag.write_pointcloud_bag(tmp_path / "b", [(5_000_000_000, "/p", _clouds()[1][2], "lidar")])
    (m,) = bag.iter_pointclouds(tmp_path / "b")
    raw = bag.set_header_stamp(m.rawdata, 1_700_000_000_123_456_789)
    assert len(raw) == len(m.rawdata) and raw[12:] == m.rawdata[12:]
    msg = m._replace(rawdata=raw).deserialize()
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert msg.header.frame_id == "lidar"


def test_foundry_msgs_definitions_register_for_writing(tmp_path):
    store = bag.new_typestore()
    added = bag.register_msg_types(store, ["foundry_msgs/msg/LabelMap", "foundry_msgs/InferenceReport"])
    assert set(added) == {"foundry_msgs/msg/LabelMap", "foundry_msgs/msg/LabelEntry",
                          "foundry_msgs/msg/InferenceReport"}
    T = store.types
    label_map = T["foundry_msgs/msg/LabelMap"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id=""),
        model_hash="abc", entries=[T["foundry_msgs/msg/LabelEntry"](
            id=3, name="chair", color=T["std_msgs/msg/ColorRGBA"](r=1.0, g=0.5, b=0.0, a=1.0))])
    back = store.deserialize_cdr(store.serialize_cdr(label_map, "foundry_msgs/msg/LabelMap"),
                                 "foundry_msgs/msg/LabelMap")
    assert back.entries[0].name == "chair" and back.entries[0].id == 3
    with pytest.raises(ValueError, match="no message definition"):
        bag.register_msg_types(store, ["foundry_msgs/msg/DoesNotExist"])


# ------------------------------------------------------------------------------------------------
# ROS-free: packing point files


def _write_pcd(path: Path, cols: list[str], rows: np.ndarray, width: int, height: int, data: str) -> None:
    header = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(cols)}\nSIZE {' '.join('4' * len(cols))}\n"
              f"TYPE {' '.join('F' * len(cols))}\nCOUNT {' '.join('1' * len(cols))}\nWIDTH {width}\n"
              f"HEIGHT {height}\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {width * height}\nDATA {data}\n")
    if data == "ascii":
        body = "\n".join(" ".join(repr(float(v)) for v in r) for r in rows).encode() + b"\n"
    else:
        body = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    path.write_bytes(header.encode() + body)


def test_pack_scans(tmp_path):
    rng = np.random.default_rng(3)
    kitti = rng.uniform(-20, 20, (6, 4)).astype(np.float32)
    kitti.tofile(tmp_path / "000000.bin")
    xyzi = rng.uniform(-1, 1, (5, 4)).astype(np.float32)
    _write_pcd(tmp_path / "ascii.pcd", ["x", "y", "z", "intensity"], xyzi, 5, 1, "ascii")
    organised = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    organised[4] = np.nan
    _write_pcd(tmp_path / "organised.pcd", ["x", "y", "z"], organised, 3, 2, "binary")
    from pypcd4 import Encoding, PointCloud
    PointCloud.from_xyzi_points(xyzi[:4]).save(tmp_path / "compressed.pcd", encoding=Encoding.BINARY_COMPRESSED)
    np.save(tmp_path / "cloud.npy", kitti[:3, :3])
    files = [tmp_path / n for n in ("000000.bin", "ascii.pcd", "organised.pcd", "compressed.pcd", "cloud.npy")]

    n = bag.pack_scans(files, tmp_path / "packed", topic="/velodyne_points", rate_hz=5.0, repeat=2,
                       frame_id="velo")
    assert n == 10
    assert bag.list_pointcloud_topics(tmp_path / "packed") == {"/velodyne_points": 10}
    got = list(bag.iter_pointclouds(tmp_path / "packed"))
    assert np.diff([m.stamp_ns for m in got]).tolist() == [200_000_000] * 9
    expected = [kitti, xyzi, organised.reshape(2, 3, 3), xyzi[:4], kitti[:3, :3]] * 2
    for m, points in zip(got, expected, strict=True):
        _check_cloud(m, m.stamp_ns, "/velodyne_points", points, "velo")

    (tmp_path / "broken.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="broken.bin"):
        bag.pack_scans([tmp_path / "broken.bin"], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="nope.pcd"):
        bag.pack_scans([tmp_path / "nope.pcd"], tmp_path / "y")


def test_cli_pack_and_info(tmp_path, capsys):
    np.zeros((4, 4), np.float32).tofile(tmp_path / "a.bin")
    assert bag_replay.main(["pack", str(tmp_path / "b"), str(tmp_path / "a.bin"), "--topic", "/p",
                            "--storage", "sqlite3", "--repeat", "3"]) == 0
    assert bag_replay.main(["info", str(tmp_path / "b")]) == 0
    assert "/p\tsensor_msgs/msg/PointCloud2\t3" in capsys.readouterr().out
    assert bag_replay.main(["info", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# With ROS: the CLI player and recorder in a child process, on local-only DDS


@pytest.fixture
def ros_env(tmp_path):
    """The local-only DDS env that this process and the child share (skips without ROS 2)."""
    pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
    pytest.importorskip("sensor_msgs.msg")
    pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
    with local_dds(tmp_path / "ros") as env:
        yield env


@contextlib.contextmanager
def cli(env, tmp_path: Path, *args: str):
    """foundry-bag ARGS in a child process; yields the Popen, stops it at the end."""
    log = open(tmp_path / "cli.log", "w+")
    child = subprocess.Popen([sys.executable, "-m", "foundry_ros.bag_replay", *args], env=env, cwd=str(REPO_ROOT),
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True)
    child.log_text = lambda: (tmp_path / "cli.log").read_text()
    try:
        yield child
    finally:
        stop_process(child, timeout=5)
        log.close()


def test_play_keeps_payload_and_timing(ros_env, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    gaps = [0.1, 0.3, 0.1, 0.2, 0.05]
    stamps = 1_000_000_000 + np.cumsum([0] + [int(g * 1e9) for g in gaps])
    clouds = _clouds()
    frames = [(int(s), "/cam/points", clouds[i % 4][2], "cam") for i, s in enumerate(stamps)]
    frames.append((1_100_000_000, "/other", clouds[0][2], "x"))  # not played (only --topic /cam/points)
    bag.write_pointcloud_bag(tmp_path / "bag", frames)
    stored = [m.rawdata for m in bag.iter_pointclouds(tmp_path / "bag", ["/cam/points"])]

    with ros_session("bag_test_listener") as (node, ex):
        got: list[tuple[float, bytes]] = []
        node.create_subscription(PointCloud2, "/test/replayed", lambda raw: got.append((time.monotonic(), raw)),
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        with cli(ros_env, tmp_path, "play", str(tmp_path / "bag"), "--topic", "/cam/points",
                 "--topic-map", "/cam/points:/test/replayed", "--rate", "1.0",
                 "--wait-for-subscribers", "1", "--start-delay", str(TIMEOUT_S)) as child:
            spin_until(ex, lambda: len(got) >= len(stored) or child.poll() is not None, "the replayed clouds")
            spin_until(ex, lambda: child.poll() is not None, "the player to exit")
            assert child.returncode == 0, child.log_text()
            assert f"published {len(stored)} messages" in child.log_text()
    # Byte for byte, in order, nothing from /other. Fast DDS pads a serialized message with zeros to
    # a multiple of 4 bytes on the wire (rosbags writes it unpadded), so compare up to that padding.
    assert len(got) == len(stored)
    for (_, raw), want in zip(got, stored, strict=True):
        assert raw[:len(want)] == want and not raw[len(want):].strip(b"\0") and len(raw) - len(want) < 4
    arrivals = np.array([t for t, _ in got])
    span, expected = arrivals[-1] - arrivals[0], sum(gaps)
    assert 0.7 * expected <= span <= 1.3 * expected, (span, np.diff(arrivals))
    np.testing.assert_allclose(np.diff(arrivals), gaps, atol=0.12)


def test_record_outputs(ros_env, tmp_path):
    from foundry_msgs.msg import InferenceReport, LabelMap
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from support.msg_samples import sample_label_map, sample_report

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    clouds = [bag.default_typestore().serialize_cdr(bag.pointcloud2_message(p, s, f), bag.POINTCLOUD2).tobytes()
              for s, _, p, f in _clouds()[:3]]
    out = tmp_path / "recorded"
    with ros_session("bag_test_talker") as (node, ex):
        pub_report = node.create_publisher(InferenceReport, "/test/report", reliable)
        pub_labels = node.create_publisher(LabelMap, "/test/labels", latched)
        pub_points = node.create_publisher(PointCloud2, "/test/points", reliable)
        pub_labels.publish(sample_label_map())  # before the recorder exists: needs transient local
        total = 1 + 3 + len(clouds)
        with cli(ros_env, tmp_path, "record", str(out), "--topics", "/test/report", "/test/labels", "test/points",
                 "--max-messages", str(total), "--duration", str(3 * TIMEOUT_S)) as child:
            spin_until(ex, lambda: child.poll() is not None or (
                pub_report.get_subscription_count() > 0 and pub_points.get_subscription_count() > 0),
                "the recorder's subscriptions")
            for i in range(3):
                pub_report.publish(sample_report(i))
            for raw in clouds:
                pub_points.publish(raw)
            spin_until(ex, lambda: child.poll() is not None, "the recorder to stop after its messages")
            assert child.returncode == 0, child.log_text()
            assert f"recorded {total} messages" in child.log_text(), child.log_text()

    assert bag.list_topics(out) == {"/test/report": ("foundry_msgs/msg/InferenceReport", 3),
                                    "/test/labels": ("foundry_msgs/msg/LabelMap", 1),
                                    "/test/points": (bag.POINTCLOUD2, 3)}
    store = bag.new_typestore()
    bag.register_msg_types(store, ["foundry_msgs/msg/InferenceReport", "foundry_msgs/msg/LabelMap"])
    msgs = list(bag.iter_messages(out))
    assert [m.stamp_ns for m in msgs] == sorted(m.stamp_ns for m in msgs)
    reports = [m.deserialize(store) for m in msgs if m.topic == "/test/report"]
    assert [r.frame_index for r in reports] == [0, 1, 2]
    want = sample_report(1)
    assert (reports[1].backend, reports[1].points_in, reports[1].latency_ms) == (
        want.backend, want.points_in, pytest.approx(want.latency_ms))
    (labels,) = [m.deserialize(store) for m in msgs if m.topic == "/test/labels"]
    assert [(e.id, e.name) for e in labels.entries] == [(e.id, e.name) for e in sample_label_map().entries]
    recorded_clouds = [m for m in msgs if m.topic == "/test/points"]
    for m, (stamp, _, points, frame_id) in zip(recorded_clouds, _clouds()[:3], strict=True):
        _check_cloud(m._replace(stamp_ns=stamp), stamp, "/test/points", points, frame_id)
