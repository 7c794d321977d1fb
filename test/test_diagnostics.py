"""foundry_ros.diagnostics and the other output fields (label map, embeddings), without ROS."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.diagnostics import diagnostic_values, key_values
from foundry_ros.embeddings import embeddings_fields
from foundry_ros.frame_stats import FrameStats
from foundry_ros.label_map import LabelRow, label_rows
from foundry_ros.model import ModelInfo
from foundry_ros.operating_points import OperatingPointController, PointCost


def test_diagnostic_values_from_counters_controller_and_parameters():
    p = P.default_params()
    ctl = BudgetController(P.controller_config(p, 0.1, 16, 2048))
    stats = FrameStats(initial_budget=ctl.budget)
    stats.received(replaced_stale=False)
    stats.frame_done(0.25, 0.1, 100, 1024)  # over the deadline
    stats.decode_error()
    values = diagnostic_values(stats.snapshot(), ctl, p, ModelInfo(backend="fake"), None)
    assert values.pop("level_msg") == (P.WARN, "last frame over deadline")
    assert values["backend"] == "fake" and values["deadline_source"] == "sensor period"
    assert (values["frames_received"], values["frames_processed"], values["decode_errors"]) == (1, 1, 1)
    assert (values["budget"], values["min_budget"], values["max_budget"]) == (1024, 16, 2048)
    assert values["latency_last_ms"] == 250.0 and np.isnan(values["sensor_period_ms"])
    text = dict(key_values(values))
    assert text["latency_p95_ms"] == "250.000" and text["sensor_period_ms"] == "nan"
    assert text["controller_enabled"] == "True" and text["over_deadline_streak"] == "1"
    assert values["control"] == "token_budget" and values["next_budget"] == ctl.budget
    assert "operating_point" not in values


def test_diagnostic_values_show_the_operating_point_its_predicted_latency_and_the_load():
    p = dict(P.default_params(), deadline_ms=100.0)
    ctl = OperatingPointController([PointCost("fast", 0.01), PointCost("full", 0.05)], P.op_controller_config(p, 0.1))
    for _ in range(5):
        ctl.update(0.06, "full")  # 1.2 x the calibrated cost
    stats = FrameStats()
    stats.frame_done(0.06, 0.1, 512, 512)
    values = diagnostic_values(stats.snapshot(), ctl, p, ModelInfo(backend="fake"), None)
    assert values.pop("level_msg") == (P.OK, "running")
    assert values["control"] == "operating_points" and values["operating_point"] == "full"
    assert values["operating_point_mode"] == "auto" and values["operating_points"] == "fast,full"
    assert values["load_factor"] == pytest.approx(1.2) and values["predicted_latency_ms"] == pytest.approx(60.0)
    assert values["deadline_ms"] == 100.0 and "next_budget" not in values and values["overhead_ms"] == 0.0
    fixed = diagnostic_values(stats.snapshot(), ctl, dict(p, operating_point="fast"), ModelInfo(), None)
    assert (fixed["operating_point"], fixed["operating_point_mode"]) == ("fast", "fixed")
    assert fixed["predicted_latency_ms"] == pytest.approx(12.0)  # the fixed point's, under the same load
    assert dict(key_values(fixed))["load_factor"] == "1.200"


def test_label_rows_sorted_padded_and_negative_ids_left_out():
    infos = [SimpleNamespace(id=2, name="car", color=(0.0, 1.0, 0.0)),
             SimpleNamespace(id=-1, name="void", color=(0.0, 0.0, 0.0, 1.0)),
             SimpleNamespace(id=0, name="ground", color=(1.0, 0.5, 0.0, 0.5))]
    rows, warnings = label_rows(infos)
    assert rows == [LabelRow(0, "ground", (1.0, 0.5, 0.0, 0.5)), LabelRow(2, "car", (0.0, 1.0, 0.0, 1.0))]
    assert len(warnings) == 1 and "'void'" in warnings[0]


def test_embeddings_fields_are_flat_arrays():
    result = SimpleNamespace(embeddings=np.ones((5, 2, 4)), centers=np.zeros((5, 3)),
                             token_segments=np.arange(5, dtype=np.int64))
    f = embeddings_fields(result, "abc")
    assert (f["num_tokens"], f["embedding_dim"], f["model_hash"]) == (5, 8, "abc")
    assert f["features"].shape == (40,) and f["features"].dtype == np.float32
    assert f["centers_xyz"].shape == (15,) and f["segment_of_token"].dtype == np.int32


def test_diagnostics_say_when_no_operating_point_can_hold_the_deadline():
    p = dict(P.default_params(), deadline_ms=50.0)
    ctl = OperatingPointController([PointCost("fast", 0.02), PointCost("full", 0.05)], P.op_controller_config(p, 0.05))
    stats = FrameStats()
    for _ in range(5):
        ctl.update(0.04, "fast")  # 2 x the calibrated cost of the cheapest point: 40 ms of a 50 ms deadline
        stats.frame_done(0.04, 0.05, 16, 16)
    ok = diagnostic_values(stats.snapshot(), ctl, p, ModelInfo(), None)
    assert ok["deadline_feasible"] is True and ok["cheapest_predicted_ms"] == pytest.approx(40.0)
    for _ in range(4):
        ctl.update(0.08, "fast")  # a load step: even the cheapest point now takes 80 ms
        stats.frame_done(0.08, 0.05, 16, 16)
    values = diagnostic_values(stats.snapshot(), ctl, p, ModelInfo(), None)
    level, msg = values["level_msg"]
    assert ctl.point == "fast" and values["deadline_feasible"] is False
    assert level == P.WARN and "below the cheapest operating point (fast predicted 7" in msg
    assert values["cheapest_predicted_ms"] > 50.0
    ctl.set_deadline(0.2)  # a deadline it can hold: the message goes away
    assert ctl.deadline_feasible and diagnostic_values(stats.snapshot(), ctl, dict(p, deadline_ms=200.0),
                                                       ModelInfo(), None)["level_msg"][1] == "last frame over deadline"
