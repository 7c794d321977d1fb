"""The real `foundry-node` (python -m foundry_ros.node) with the real Predictor on a tiny exported
Foundry-Gate student: PointCloud2 in, per-point labels aligned with every input point out."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")

from support.exports import SEG_CLASSES, export_task_model  # noqa: E402
from support.node_harness import TOPIC, make_cloud, node_harness, parse_output, random_cloud  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_node")
    model = export_task_model(tmp)
    overrides = f"""
foundry:
  ros__parameters:
    model_path: "{model}"
    input_topics: ["{TOPIC}"]
    deadline_ms: 500.0
    max_age_s: 5.0
"""
    with node_harness(tmp, ["-m", "foundry_ros.node"], overrides) as harness:
        yield harness


def test_real_predictor_labels_every_input_point(node):
    xyz, intensity = random_cloud(3000, nan_rows=(5, 6, 2999), seed=3)
    msg = make_cloud(xyz, intensity, 1, 3000, frame_id="velodyne")
    seg, report, _ = node.roundtrip(msg)
    assert seg.header == msg.header and (seg.height, seg.width) == (1, 3000)
    out = parse_output(seg)
    valid = np.isfinite(xyz).all(axis=1)
    assert (out["label"][~valid] == -1).all() and (out["segment"][~valid] == -1).all()
    assert ((out["label"][valid] >= 0) & (out["label"][valid] < len(SEG_CLASSES))).all()
    assert (out["confidence"][valid] > 0).all() and (out["segment"][valid] >= 0).all()
    assert report.backend == "torch-cpu" and len(report.model_hash) == 12
    assert report.points_in == 2997 and 0 < report.tokens_in_encoder <= report.token_budget
    assert report.points_dropped == report.points_in - report.points_used
    assert 0 < report.tokens_in_encoder <= report.num_centers
    assert report.fusion_ratio == pytest.approx(report.tokens_in_encoder / report.num_centers)
    assert 0.0 <= report.fusion_threshold  # the gated student's r (its training threshold)


def test_real_predictor_organised_cloud(node):
    xyz, intensity = random_cloud(8 * 50, nan_rows=tuple(range(0, 400, 37)), seed=4)
    msg = make_cloud(xyz, intensity, 8, 50, frame_id="camera")
    seg, _, _ = node.roundtrip(msg)
    assert (seg.height, seg.width) == (8, 50)
    out = parse_output(seg)
    valid = np.isfinite(xyz).all(axis=1)
    assert (out["label"][~valid] == -1).all() and (out["label"][valid] >= 0).all()
