"""foundry_ros.report: the InferenceReport fields of one frame, without ROS."""
from __future__ import annotations

import math

import pytest

from foundry_core.runtime.types import FrameReport
from foundry_ros.frame_stats import FrameRecord
from foundry_ros.model import ModelInfo
from foundry_ros.msg_values import fill_message
from foundry_ros.report import StageTimes, build_report, fusion_ratio, report_fields

MODEL = ModelInfo(backend="torch-cpu", precision="fp16", model_hash="abc123")
TIMES = StageTimes(received=10.0, started=10.001, decoded=10.003, predicted=10.020, mapped=10.022,
                   published=10.025)
FIELDS = {"operating_point",
          "tokens_in_encoder", "token_budget", "num_centers", "fusion_ratio", "fusion_threshold", "backend",
          "precision", "model_hash", "points_in", "points_used", "points_dropped", "points_unlabelled",
          "latency_ms", "deadline_ms", "preprocess_ms", "tokenize_ms", "encode_ms", "head_ms", "publish_ms",
          "frame_index", "frames_dropped_stale", "frames_received", "frames_stale_total", "frames_too_old",
          "frames_lost", "frames_failed"}


def frame_report(**kw) -> FrameReport:
    base = dict(points_in=1000, points_used=900, points_unlabelled=40, tokens_in_encoder=24, token_budget=64,
                fusion_threshold=0.5, num_centers=32, backend="torch-cpu", precision="fp32", model_hash="abc123",
                timings_ms={"preprocess": 1.0, "tokenize": 4.0, "encode": 9.0, "head": 1.5, "postprocess": 0.5})
    return FrameReport(**{**base, **kw})


def fields(fr, **kw):
    args = dict(times=TIMES, points_in=1000, budget=64, deadline_s=0.05, record=FrameRecord(7, 2), model=MODEL)
    return report_fields(fr, **{**args, **kw})


def test_fields_of_a_predicted_frame():
    f = fields(frame_report())
    assert set(f) == FIELDS
    assert (f["tokens_in_encoder"], f["token_budget"], f["num_centers"]) == (24, 64, 32)
    assert f["fusion_ratio"] == pytest.approx(24 / 32) and f["fusion_threshold"] == 0.5
    assert (f["points_in"], f["points_used"], f["points_dropped"], f["points_unlabelled"]) == (1000, 900, 100, 40)
    assert (f["backend"], f["precision"], f["model_hash"]) == ("torch-cpu", "fp32", "abc123")  # the frame's precision
    assert (f["frame_index"], f["frames_dropped_stale"]) == (7, 2)
    assert f["operating_point"] == ""  # token-budget control
    assert fields(frame_report(), operating_point="fast")["operating_point"] == "fast"


def test_stage_times_add_the_node_and_the_predictor_parts():
    f = fields(frame_report())
    assert f["latency_ms"] == pytest.approx(25.0) and f["deadline_ms"] == pytest.approx(50.0)
    assert f["preprocess_ms"] == pytest.approx(2.0 + 1.0)  # decode + the predictor's preprocess
    assert (f["tokenize_ms"], f["encode_ms"]) == (4.0, 9.0)
    assert f["head_ms"] == pytest.approx(1.5 + 0.5 + 2.0)  # head + postprocess + mapping onto the grid
    assert f["publish_ms"] == pytest.approx(3.0)
    stages = sum(f[k] for k in ("preprocess_ms", "tokenize_ms", "encode_ms", "head_ms", "publish_ms"))
    assert stages <= f["latency_ms"]
    assert TIMES.overhead_s == pytest.approx(0.025 - 0.017)  # all but decoded -> predicted


def test_the_controller_overhead_holds_everything_the_operating_point_does_not_set():
    """Pre- and postprocessing grow with the input cloud, not with the point: they count as overhead."""
    assert TIMES.overhead_beyond_point_s(frame_report()) == pytest.approx(0.025 - (4.0 + 9.0 + 1.5) / 1e3)
    assert TIMES.overhead_beyond_point_s(None) == pytest.approx(TIMES.overhead_s)   # no predictor call
    assert TIMES.overhead_beyond_point_s(frame_report(timings_ms={})) == pytest.approx(TIMES.overhead_s)


def test_fields_without_a_prediction():
    f = fields(None, points_in=0)
    assert (f["tokens_in_encoder"], f["num_centers"], f["points_used"], f["points_unlabelled"]) == (0, 0, 0, 0)
    assert f["fusion_ratio"] == 1.0 and math.isnan(f["fusion_threshold"])
    assert f["precision"] == "fp16"  # the model's
    assert (f["tokenize_ms"], f["encode_ms"]) == (0.0, 0.0)


def test_counters_are_clipped_into_uint32():
    f = fields(frame_report(points_used=1200, tokens_in_encoder=2**40), budget=-3)
    assert f["points_dropped"] == 0 and f["token_budget"] == 0 and f["tokens_in_encoder"] == 2**32 - 1


def test_fusion_ratio():
    assert fusion_ratio(16, 32) == 0.5
    assert fusion_ratio(40, 32) == 1.0  # never above 1
    assert fusion_ratio(0, 32) == 1.0 and fusion_ratio(5, 0) == 1.0


class _Report:
    """The fields of foundry_msgs/InferenceReport as slots: like a generated message, no other can be set."""

    __slots__ = ("header", *sorted(FIELDS))


def test_fill_message_refuses_unknown_fields():  # the generated constructor would ignore them silently
    with pytest.raises(AttributeError):
        fill_message(_Report, header=None, not_a_field=1)


def test_build_report_fills_a_message_class():
    m = build_report(_Report, "the header", frame_report(), times=TIMES, points_in=1000, budget=64,
                     deadline_s=0.05, record=FrameRecord(3, 0), model=MODEL)
    assert m.header == "the header" and m.frame_index == 3 and m.points_dropped == 100


def test_build_report_fills_the_generated_message():
    msgs = pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
    from std_msgs.msg import Header
    m = build_report(msgs.InferenceReport, Header(frame_id="lidar"), frame_report(), times=TIMES, points_in=1000,
                     budget=64, deadline_s=0.05, record=FrameRecord(3, 1), model=MODEL)
    assert m.header.frame_id == "lidar" and m.points_unlabelled == 40 and m.num_centers == 32
    assert m.fusion_threshold == 0.5 and m.fusion_ratio == pytest.approx(0.75)
    assert m.operating_point == ""
    m = build_report(msgs.InferenceReport, Header(frame_id="lidar"), frame_report(), times=TIMES, points_in=1000,
                     budget=64, deadline_s=0.05, record=FrameRecord(4, 0), model=MODEL, operating_point="full")
    assert m.operating_point == "full" and m.token_budget == 64
