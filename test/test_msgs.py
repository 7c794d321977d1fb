"""foundry_msgs (msg/): types, CDR round trips and a real pub/sub between two processes.

Skipped when the messages are not built (run scripts/build_msgs.sh). The pub/sub tests use the
local-only DDS environment of foundry_ros.dds (shared memory + loopback, private domain id).
"""
from __future__ import annotations

import array
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
msgs = pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from foundry_ros import dds  # noqa: E402
from foundry_ros.process import stop_process  # noqa: E402
from support.msg_samples import sample_embeddings, sample_label_map, sample_report  # noqa: E402
from support.ros_session import TIMEOUT_S, local_dds, ros_session, spin_until  # noqa: E402

# rosidl's parser (pulled in by rclpy.serialization) imports lark-parser 0.12, which uses sre_parse.
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

InferenceReport, TokenEmbeddings = msgs.InferenceReport, msgs.TokenEmbeddings
LabelEntry, LabelMap = msgs.LabelEntry, msgs.LabelMap

EXPECTED_FIELDS = {
    InferenceReport: {
        "header": "std_msgs/Header", "operating_point": "string",
        "tokens_in_encoder": "uint32", "token_budget": "uint32", "num_centers": "uint32",
        "fusion_ratio": "float", "fusion_threshold": "float",
        "backend": "string", "precision": "string", "model_hash": "string",
        "points_in": "uint32", "points_used": "uint32", "points_dropped": "uint32", "points_unlabelled": "uint32",
        "latency_ms": "float", "deadline_ms": "float",
        "preprocess_ms": "float", "tokenize_ms": "float", "encode_ms": "float", "head_ms": "float",
        "publish_ms": "float",
        "frame_index": "uint32", "frames_dropped_stale": "uint32", "frames_received": "uint32",
        "frames_stale_total": "uint32", "frames_too_old": "uint32", "frames_lost": "uint32", "frames_failed": "uint32",
    },
    TokenEmbeddings: {
        "header": "std_msgs/Header", "num_tokens": "uint32", "embedding_dim": "uint32",
        "centers_xyz": "sequence<float>", "features": "sequence<float>",
        "segment_of_token": "sequence<int32>", "model_hash": "string",
    },
    LabelEntry: {"id": "uint32", "name": "string", "color": "std_msgs/ColorRGBA"},
    LabelMap: {"header": "std_msgs/Header", "model_hash": "string",
               "entries": "sequence<foundry_msgs/LabelEntry>"},
}


@pytest.mark.parametrize("cls", list(EXPECTED_FIELDS), ids=lambda c: c.__name__)
def test_fields_have_documented_types(cls):
    assert cls.get_fields_and_field_types() == EXPECTED_FIELDS[cls]
    m = cls()  # constructs with defaults
    for name, kind in EXPECTED_FIELDS[cls].items():
        value = getattr(m, name)
        if kind in ("uint32", "int32"):
            assert value == 0 and isinstance(value, int)
        elif kind == "float":
            assert value == 0.0 and isinstance(value, float)
        elif kind == "string":
            assert value == ""
        elif kind == "sequence<float>":
            assert isinstance(value, array.array) and value.typecode == "f" and len(value) == 0
        elif kind == "sequence<int32>":
            assert isinstance(value, array.array) and value.typecode == "i" and len(value) == 0
        elif kind.startswith("sequence<"):
            assert value == []


def test_field_checks_on_request():
    # Kilted's generated classes check field types/ranges only with check_fields=True or
    # ROS_PYTHON_CHECK_FIELDS=1; unchecked, -1 fails late (SystemError in serialize_message) and
    # 2**32 silently wraps to 0 in a uint32, so producers must clip counters themselves.
    with pytest.raises(AssertionError, match="unsigned integer"):
        InferenceReport(check_fields=True, points_in=-1)
    with pytest.raises(AssertionError, match="unsigned integer"):
        LabelEntry(check_fields=True, id=2**32)
    with pytest.raises((AssertionError, TypeError)):
        TokenEmbeddings(check_fields=True, features=["x"])


def _report_at_a_point():
    m = sample_report(4)
    m.operating_point = "balanced"
    return m


@pytest.mark.parametrize("make", [lambda: sample_report(3), _report_at_a_point, sample_label_map,
                                  lambda: sample_embeddings(64, 32)],
                         ids=["InferenceReport", "InferenceReport-operating-point", "LabelMap", "TokenEmbeddings"])
def test_serialization_round_trip(make):
    m = make()
    back = deserialize_message(serialize_message(m), type(m))
    assert back == m


def test_token_embeddings_numpy_views():
    n, d = 100, 16
    m = sample_embeddings(n, d)
    back = deserialize_message(serialize_message(m), TokenEmbeddings)
    features = np.frombuffer(back.features, dtype=np.float32).reshape(back.num_tokens, back.embedding_dim)
    centers = np.frombuffer(back.centers_xyz, dtype=np.float32).reshape(-1, 3)
    assert features.shape == (n, d) and centers.shape == (n, 3)
    np.testing.assert_array_equal(features.ravel(), np.asarray(m.features))
    assert len(back.segment_of_token) == n


# ---------------------------------------------------------------------------------------------
# Two processes over DDS
# ---------------------------------------------------------------------------------------------

PUBLISHER = textwrap.dedent("""
    import select, sys, time
    import numpy as np
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from support.msg_samples import sample_embeddings, sample_label_map, sample_report
    from foundry_msgs.msg import InferenceReport, LabelMap, TokenEmbeddings

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("foundry_test_publisher")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub_report = node.create_publisher(InferenceReport, "foundry/report", reliable)
    pub_emb = node.create_publisher(TokenEmbeddings, "foundry/embeddings", reliable)
    pub_labels = node.create_publisher(LabelMap, "foundry/label_map", latched)
    pub_labels.publish(sample_label_map())    # once, before anyone listens
    print("READY", flush=True)

    deadline = time.monotonic() + {timeout}
    while pub_report.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "no subscriber matched"
        rclpy.spin_once(node, timeout_sec=0.05)
    print("MATCHED", flush=True)
    emb = sample_embeddings({n_tokens}, {dim}, seed=1)
    frame = 0
    while True:                                   # until the test writes a line (or closes stdin)
        pub_report.publish(sample_report(frame))
        if pub_emb.get_subscription_count():
            pub_emb.publish(emb)
        frame += 1
        if select.select([sys.stdin], [], [], 0.05)[0]:
            break
    node.destroy_node()
    rclpy.shutdown()
    print("DONE", frame, flush=True)
""")


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    """The local-only DDS environment, for the child and (before rclpy.init) for this process."""
    with local_dds(tmp_path_factory.mktemp("ros")) as env:
        yield env


def _read_line(child: subprocess.Popen, timeout: float) -> str:
    """One line of the child's stdout, or fail after timeout (with its stderr if it died)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no output from the publisher within {timeout:.0f} s")
    line = child.stdout.readline()
    if not line:
        raise AssertionError(f"publisher exited early: {child.stderr.read()}")
    return line.strip()


def test_pub_sub_between_processes(ros_env, tmp_path):
    n_tokens, dim = 1024, 256  # 1 MiB of features in one message
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER.format(timeout=TIMEOUT_S, n_tokens=n_tokens, dim=dim))
    child = subprocess.Popen([sys.executable, str(script)], env=ros_env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with ros_session("foundry_test_subscriber") as (node, ex):
            assert _read_line(child, TIMEOUT_S) == "READY", "publisher did not start"
            reports, embeddings, label_maps = [], [], []
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            sub = node.create_subscription(InferenceReport, "foundry/report", reports.append, reliable)
            spin_until(ex, lambda: sub.get_publisher_count() > 0, "the publisher to match")
            spin_until(ex, lambda: len(reports) >= 3, "three InferenceReports")
            first = reports[0]
            assert first == sample_report(first.frame_index)
            frames = [r.frame_index for r in reports]
            assert frames == sorted(set(frames)), frames  # in order, no duplicates

            node.create_subscription(TokenEmbeddings, "foundry/embeddings", embeddings.append, reliable)
            spin_until(ex, lambda: len(embeddings) >= 1, "a TokenEmbeddings message")
            assert embeddings[0] == sample_embeddings(n_tokens, dim, seed=1)

            # Late joiner: the LabelMap was published once, long before this subscription existed.
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            node.create_subscription(LabelMap, "foundry/label_map", label_maps.append, latched)
            spin_until(ex, lambda: len(label_maps) >= 1, "the transient-local LabelMap")
            assert label_maps[0] == sample_label_map()
            assert len(label_maps) == 1

            child.stdin.write("stop\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=TIMEOUT_S)
            assert child.returncode == 0, err
            assert "MATCHED" in out and "DONE" in out, (out, err)
    finally:
        stop_process(child, timeout=5)


def test_child_sees_the_safe_environment(ros_env):
    code = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            f"{list(dds.ROS_ENV_KEYS)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], env=ros_env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == {k: ros_env[k] for k in dds.ROS_ENV_KEYS}
