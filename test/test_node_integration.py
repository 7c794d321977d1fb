"""The Foundry node in its own process (FakePredictor), driven over real DDS from this process.

One node process serves the module (start-up is the expensive part); the ``h`` fixture gives every
test that node with its run-time parameters reset to OVERRIDES, so each test passes alone and in
any order. Tests that stop the node start their own. Every wait spins until a condition holds
(match counts, a message with the right stamp, a diagnostics counter), never a fixed sleep. Inputs
are best-effort on the node's side (its default), so a publication is repeated if its output does
not come back within RETRY_S.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
msgs = pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("diagnostic_msgs.msg")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from foundry_ros import dds  # noqa: E402
from support import REPO_ROOT, TEST_DIR  # noqa: E402
from support.fakes import FAIL_X, FAKE_POINTS, FakePredictor  # noqa: E402
from support.node_harness import (SHIPPED_CONFIG, TOPIC, check_aligned, make_cloud, node_harness,  # noqa: E402
                                  parse_output, random_cloud)
from support.ros_session import with_test_path  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

FAKE_NODE = [str(TEST_DIR / "foundry_node_fake.py")]
#: The node with a fake that has operating points (tiny 2 ms, small 6 ms, medium 15 ms, full 40 ms).
FAKE_OP_NODE = ["-m", "support.fakes", "--operating-points"]
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
#: Run-time parameters a test may change, with their OVERRIDES values (restored before every test).
RUN_TIME = {"deadline_ms": 200.0, "min_budget": 64, "max_budget": 8192, "initial_budget": 1024,
            "publish_embeddings": True}


def _alive_with(process, **values):
    """``process`` (a module's node), checked alive, after setting ``values`` (all accepted)."""
    assert process.child.poll() is None, "the module's node process has exited"
    results = process.set_params(**values)
    assert all(r.successful for r in results), [r.reason for r in results]
    return process


def _module_node(tmp_path_factory, name: str, script):
    """A node process for the whole module (a generator for module-scoped fixtures)."""
    with node_harness(tmp_path_factory.mktemp(name), script, OVERRIDES) as harness:
        yield harness


@pytest.fixture(scope="module")
def node_process(tmp_path_factory):
    yield from _module_node(tmp_path_factory, "foundry_node", FAKE_NODE)


@pytest.fixture
def h(node_process):
    """The module's node, alive and with its run-time parameters as in OVERRIDES."""
    return _alive_with(node_process, **RUN_TIME)


# ------------------------------------------------------------------------------------------------
# tests


def test_unorganised_cloud_with_nans_is_index_aligned(h):
    xyz, intensity = random_cloud(50, nan_rows=(3, 17, 18, 40), seed=1)
    msg = make_cloud(xyz, intensity, 1, 50, frame_id="lidar_front")
    seg, report, _ = h.roundtrip(msg)
    check_aligned(seg, msg, xyz, intensity)
    assert report.header == msg.header
    assert report.points_in == 46 and report.points_used == 46 and report.points_dropped == 0
    assert report.points_unlabelled == 0 and report.num_centers == FakePredictor().num_centers
    assert report.fusion_ratio == pytest.approx(report.tokens_in_encoder / report.num_centers)
    assert np.isnan(report.fusion_threshold)  # fusion_threshold -1: budget-driven, no r passed
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
    labels: list = []
    sub = h.node.create_subscription(msgs.LabelMap, "/foundry/labels", labels.append, latched)
    try:
        h.wait(lambda: labels, "the transient-local LabelMap")
    finally:
        h.node.destroy_subscription(sub)
    m = labels[0]
    assert m.model_hash == FakePredictor.model_hash
    assert [(e.id, e.name) for e in m.entries] == [(0, "x_not_positive"), (1, "x_positive")]
    assert (m.entries[1].color.g, m.entries[1].color.a) == (1.0, 1.0)


def test_embeddings_published_while_subscribed(h):
    h.wait(lambda: h.subs[3].get_publisher_count() > 0, "the embeddings publisher")
    xyz, intensity = random_cloud(40, seed=3)
    msg = make_cloud(xyz, intensity, 1, 40)
    h.roundtrip(msg)
    key = h.key(msg.header)  # roundtrip left the stamp of the answered publication in msg
    h.wait(lambda: any(h.key(e.header) == key for e in h.embeddings), "TokenEmbeddings of the frame")
    emb = [e for e in h.embeddings if h.key(e.header) == key][0]
    assert emb.num_tokens == 32 and emb.embedding_dim == 8
    assert len(emb.features) == 32 * 8 and len(emb.centers_xyz) == 32 * 3 and len(emb.segment_of_token) == 32
    assert emb.model_hash == FakePredictor.model_hash


def test_malformed_failing_and_stale_clouds_are_survived(h):
    xyz, intensity = random_cloud(30, seed=4)
    h.fresh_diagnostics()  # counters as they are now (errors of earlier tests included)
    base = {c: h.diag_count(c) for c in ("decode_errors", "predictor_errors", "frames_dropped_age")}
    cases = [
        (make_cloud(xyz, intensity, 1, 30, drop_z=True), 0.0, "decode_errors", 1),  # no z field
        (make_cloud(xyz, intensity, 1, 30, truncate=7), 0.0, "decode_errors", 2),  # truncated data
        (make_cloud(np.where(np.arange(30)[:, None] == 5, FAIL_X, xyz).astype(np.float32), intensity, 1, 30),
         0.0, "predictor_errors", 1),  # the predictor raises
        (make_cloud(xyz, intensity, 1, 30), 10.0, "frames_dropped_age", 1),  # 10 s old > max_age_s
    ]
    saw_error_level = False
    for bad, age, counter, added in cases:
        expected = base[counter] + added
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
    assert int(diag["decode_errors"]) >= base["decode_errors"] + 2
    assert int(diag["predictor_errors"]) >= base["predictor_errors"] + 1
    # each kind is logged (the first time, then throttled), and nothing escaped as a traceback
    logged = ("skipping malformed PointCloud2", "predictor failed", "dropping a cloud")
    h.wait(lambda: all(line in h.log.read_text() for line in logged), f"the log lines {logged}")
    assert "Traceback" not in h.log.read_text()


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
    # each cloud gets through in a few publications (a repeat every RETRY_S while a 120k-point frame is
    # still being processed on a loaded 2-core machine); a lost shared-memory path would need all of them
    assert sent_total <= 12, f"{sent_total} publications for 3 large clouds"


def test_incompatible_qos_publisher_turns_diagnostics_to_warn(tmp_path):
    """A best-effort driver against qos_reliability: reliable is never received: WARN with the reason."""
    with node_harness(tmp_path, FAKE_NODE, OVERRIDES + "    qos_reliability: reliable\n") as own:
        own.fresh_diagnostics()
        assert own.diagnostics[-1].level == DiagnosticStatus.OK  # waiting for input
        own.node.create_publisher(type(make_cloud(*random_cloud(1), 1, 1)), TOPIC,
                                  QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        own.wait(lambda: own.diagnostics and own.diagnostics[-1].level == DiagnosticStatus.WARN,
                 "a WARN diagnostics status after the incompatible publisher appeared")
        status = own.diagnostics[-1]
        assert "incompatible QoS" in status.message and "RELIABILITY" in status.message, status.message
        assert TOPIC in status.message and own.diag_count("incompatible_qos_events") >= 1


def test_clean_shutdown_on_sigint(tmp_path):
    with node_harness(tmp_path, FAKE_NODE, OVERRIDES) as own:  # its own node: this test stops it
        xyz, intensity = random_cloud(30, seed=7)
        msg = make_cloud(xyz, intensity, 1, 30)
        own.roundtrip(msg)
        own.child.send_signal(signal.SIGINT)
        assert own.child.wait(timeout=15) == 0
    log = own.log.read_text()
    assert "foundry node up" in log
    assert "Traceback" not in log, log[-3000:]


def test_shipped_config_loads_and_invalid_start_parameters_fail_fast(tmp_path):
    """config/foundry.yaml as rcl reads it (e.g. `extra_fields: []` is NOT_SET) and start-up checks."""
    env = with_test_path(dds.ros_env(workdir=tmp_path / "ros"))
    base = [sys.executable, *FAKE_NODE, "--params-file", str(SHIPPED_CONFIG)]
    for extra, message in [
        (["--ros-args", "-p", "min_budget:=9000"], "min_budget (9000) must be <= max_budget (8192)"),
        ([], "the model needs 4 input channels"),  # the fake wants intensity, the shipped config gives xyz
    ]:
        out = subprocess.run(base + extra, env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 1, out.stderr
        assert message in out.stderr, out.stderr


# ------------------------------------------------------------------------------------------------
# a model with operating points (its own node, started after the tests above)


@pytest.fixture(scope="module")
def op_node_process(tmp_path_factory):
    yield from _module_node(tmp_path_factory, "foundry_op_node", FAKE_OP_NODE)


@pytest.fixture
def op(op_node_process):
    """The module's operating-point node, alive, at deadline 200 ms and operating_point auto."""
    return _alive_with(op_node_process, deadline_ms=200.0, operating_point="auto")


def _points(reports) -> list[str]:
    return [r.operating_point for r in reports]


def test_operating_points_calibrated_at_start_and_lowered_deadline_followed(op):
    log = op.log.read_text()
    assert "operating points (cheapest first)" in log
    for point in FAKE_POINTS:
        assert any(line.split()[:1] == [point.name] and "calibrated" in line for line in log.splitlines()), log
    # deadline 200 ms: the richest point (full, 40 ms) fits
    reports = _run_frames(op, 20, until=lambda r: len(r) >= 3 and r[-1].operating_point == "full")
    assert reports[-1].operating_point == "full", _points(reports)
    assert (reports[-1].token_budget, reports[-1].num_centers) == (512, 512)  # full: c = 512, every token

    # 15 ms at run time: reaches the controller at once, the node runs cheaper points
    [res] = op.set_params(deadline_ms=15.0)
    assert res.successful, res.reason
    reports = _run_frames(op, 25, until=lambda r: len(r) >= 5 and set(_points(r[-5:])) <= {"tiny", "small"})
    assert reports[0].operating_point != "full", _points(reports)
    assert set(_points(reports[-5:])) <= {"tiny", "small"}, _points(reports)  # medium (15 ms) can not fit
    assert all(r.deadline_ms == pytest.approx(15.0) for r in reports)
    op.fresh_diagnostics()
    diag = op.last_diag()
    assert diag["control"] == "operating_points" and diag["operating_point"] in ("tiny", "small"), diag
    assert float(diag["predicted_latency_ms"]) > 0 and float(diag["load_factor"]) > 0
    assert float(diag["overhead_ms"]) > 0  # decode, mapping and publish, outside the model
    assert float(diag["deadline_ms"]) == pytest.approx(15.0)

    # a loose deadline: back up, one point at a time, to the richest
    [res] = op.set_params(deadline_ms=1000.0)
    assert res.successful, res.reason
    reports = _run_frames(op, 100, until=lambda r: r[-1].operating_point == "full")   # stops once there
    assert reports[-1].operating_point == "full", _points(reports)


def test_operating_point_parameter_fixed_or_auto(op):
    [res] = op.set_params(operating_point="turbo")
    assert not res.successful
    assert "['tiny', 'small', 'medium', 'full']" in res.reason, res.reason
    [res] = op.set_params(operating_point="small")
    assert res.successful, res.reason
    reports = _run_frames(op, 3)
    assert _points(reports) == ["small"] * 3
    assert (reports[-1].token_budget, reports[-1].num_centers, reports[-1].tokens_in_encoder) == (96, 128, 96)
    op.fresh_diagnostics()
    assert (op.last_diag()["operating_point"], op.last_diag()["operating_point_mode"]) == ("small", "fixed")
    [res] = op.set_params(operating_point="auto")
    assert res.successful, res.reason
    reports = _run_frames(op, 100, until=lambda r: r[-1].operating_point == "full")   # stops once there
    assert reports[-1].operating_point == "full", _points(reports)
