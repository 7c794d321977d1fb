"""foundry_ros.params: the Foundry node's parameter rules as pure functions (no rclpy, no spinning),
plus the shipped config/foundry.yaml and launch/foundry.launch.py checked against them."""
from __future__ import annotations

import py_compile
from pathlib import Path

import pytest
import yaml

from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.operating_points import OperatingPointController, PointCost

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_documented():
    defaults = P.default_params()
    assert P.validate_params(defaults) == []
    for spec in P.PARAM_SPECS:
        assert spec.description, spec.name
        if spec.lo is not None:
            assert spec.lo <= spec.default <= spec.hi, spec.name
    assert defaults["qos_reliability"] == "best_effort" and defaults["qos_depth"] == 2
    assert defaults["input_topics"] == ["/points"] and defaults["fusion_threshold"] == -1.0
    assert P.READ_ONLY == {"model_path", "device", "precision", "backend", "input_topics", "qos_reliability", "qos_depth",
                           "extra_fields"}


@pytest.mark.parametrize("changes, fragment", [
    ({"min_budget": 9000}, "min_budget (9000) must be <= max_budget"),
    ({"max_budget": 8}, "must be <= max_budget"),
    ({"initial_budget": 10000}, "initial_budget (10000) must lie in"),
    ({"deadline_ms": -1.0}, "deadline_ms must be >= 0"),
    ({"setpoint": 1.5}, "setpoint must be <= 1.0"),
    ({"hysteresis": 0.5}, "hysteresis must be <= 0.49"),
    ({"qos_reliability": "sometimes"}, "qos_reliability must be one of"),
    ({"precision": "bf16"}, "precision must be one of"),
    ({"device": "gpu0"}, "device must be auto, cpu, cuda or cuda:N"),
    ({"qos_depth": 0}, "qos_depth must be >= 1"),
    ({"input_topics": []}, "input_topics must hold at least one"),
    ({"input_topics": ["/a", "/a"]}, "duplicates"),
    ({"extra_fields": ["z"]}, "extra_fields must be distinct"),
    ({"max_age_s": float("nan")}, "must be finite"),
    ({"min_budget": 1.5}, "min_budget must be of type int"),
    ({"controller_enabled": 1}, "must be of type bool"),
    ({"fusion_threshold": 1.5}, "fusion_threshold must be <= 1.0"),
    ({"operating_point": ""}, "operating_point must be 'auto' or an operating point name"),
    ({"climb_frames": 0}, "climb_frames must be >= 1"),
])
def test_invalid_values_rejected_with_reason(changes, fragment):
    errors = P.validate_change(P.default_params(), changes, allow_read_only=True)
    assert errors and any(fragment in e for e in errors), errors


def test_run_time_changes_and_read_only():
    cur = P.default_params()
    assert P.validate_change(cur, {"deadline_ms": 80.0, "setpoint": 0.7}) == []
    assert P.validate_change(cur, {"deadline_ms": 80}) == []  # an int for a float is fine
    assert P.validate_change(cur, {"min_budget": 128, "max_budget": 4096}) == []  # atomic pair
    errors = P.validate_change(cur, {"model_path": "/other.pt"})
    assert errors == ["model_path is read-only (restart the node to change it)"]
    assert P.validate_change(cur, {"model_path": cur["model_path"]}) == []  # unchanged is fine
    assert P.coerce_value(P.SPECS_BY_NAME["extra_fields"], None) == []  # `[]` in YAML = NOT_SET


def test_unknown_parameter_names_are_reported_with_the_closest_known_name():
    given = ["deadine_ms", "deadline_ms", "use_sim_time", "qos_overrides./points.subscription.depth", "zzz",
             "declared_by_rclpy", "inputs_topics"]
    assert P.unknown_parameter_messages(given, known=["declared_by_rclpy"]) == [
        "unknown parameter 'deadine_ms' (did you mean 'deadline_ms'?); ignored",
        "unknown parameter 'zzz' (not a parameter of this node); ignored",
        "unknown parameter 'inputs_topics' (did you mean 'input_topics'?); ignored"]
    assert P.unknown_parameter_messages(P.SPECS_BY_NAME) == []


def test_integers_for_float_parameters_become_doubles_before_validation():
    pytest.importorskip("rclpy", reason="ROS 2 wheels not installed")
    from rclpy.parameter import Parameter

    from foundry_ros.ros_params import ints_as_floats

    T = Parameter.Type
    out = ints_as_floats([Parameter("deadline_ms", T.INTEGER, 80), Parameter("qos_depth", T.INTEGER, 2),
                          Parameter("setpoint", T.STRING, "x"), Parameter("other", T.INTEGER, 1)])
    assert [(p.name, p.type_, p.value) for p in out] == [
        ("deadline_ms", T.DOUBLE, 80.0), ("qos_depth", T.INTEGER, 2), ("setpoint", T.STRING, "x"),
        ("other", T.INTEGER, 1)]
    assert isinstance(out[0].value, float)


def test_operating_point_is_auto_or_a_name_of_the_model():
    cur = P.default_params()
    names = ("fast", "balanced", "full")
    assert cur["operating_point"] == P.AUTO and cur["climb_frames"] >= 1
    assert P.validate_change(cur, {"operating_point": "balanced"}, operating_points=names) == []
    assert P.validate_change(cur, {"operating_point": "auto"}, operating_points=names) == []
    errors = P.validate_change(cur, {"operating_point": "turbo"}, operating_points=names)
    assert errors == ["operating_point must be 'auto' or one of ['fast', 'balanced', 'full'], got 'turbo'"]
    errors = P.validate_change(cur, {"operating_point": "turbo"}, operating_points=())
    assert errors == ["operating_point must be 'auto': the model has no operating points, got 'turbo'"]
    assert P.validate_change(cur, {"operating_point": "turbo"}) == []  # model not known: form only
    with pytest.raises(ValueError, match=r"one of \['fast', 'balanced', 'full'\]"):
        P.plan_change(cur, {"operating_point": "turbo"}, P.PeriodEstimator(), operating_points=names)


def test_operating_point_controller_config_changes_and_frame_control():
    p = dict(P.default_params(), deadline_ms=100.0, setpoint=0.8, climb_frames=3)
    cfg = P.op_controller_config(p, 0.1)
    assert (cfg.deadline_s, cfg.setpoint, cfg.hysteresis, cfg.climb_frames) == (0.1, 0.8, p["hysteresis"], 3)
    names = ("fast", "full")
    ctl = OperatingPointController([PointCost("fast", 0.01), PointCost("full", 0.06)], cfg)
    assert P.frame_control(ctl, p, 0.2) == P.FrameControl(None, "full", pytest.approx(0.1))
    # run-time changes: the controller's own fields only, the deadline at once
    new_p, kw = P.plan_change(p, {"deadline_ms": 50.0, "max_step": 0.5, "climb_frames": 7}, P.PeriodEstimator(),
                              operating_points=names)
    assert kw == {"deadline_s": pytest.approx(0.05), "climb_frames": 7}
    assert ctl.reconfigure(**kw) == "fast"  # 60 ms does not fit 40 ms
    assert P.frame_control(ctl, new_p, 0.2).operating_point == "fast"
    assert P.frame_control(ctl, dict(new_p, operating_point="full"), 0.2).operating_point == "full"  # fixed
    # deadline 0: follows the sensor period, like the budget controller
    auto = dict(new_p, deadline_ms=0.0)
    assert P.frame_control(ctl, auto, 0.2).deadline_s == pytest.approx(0.2) and ctl.deadline_s == pytest.approx(0.2)
    P.observe_frame(ctl, 0.012, 0, "fast", 0.002)
    assert ctl.state.frames == 1 and ctl.state.last_point == "fast" and ctl.state.overhead_s == 0.002
    budget_ctl = BudgetController(P.controller_config(p, 0.1, 16, 2048))
    assert P.frame_control(budget_ctl, p, 0.1) == P.FrameControl(budget_ctl.budget, "", pytest.approx(0.1))
    P.observe_frame(budget_ctl, 0.01, 100, "")
    assert budget_ctl.state.last_tokens == 100


def test_controller_config_and_changes_apply_to_the_controller():
    p = P.default_params()
    cfg = P.controller_config(p, deadline_s=0.05, model_min=16, model_max=2048)
    assert (cfg.min_budget, cfg.max_budget, cfg.initial_budget) == (16, 2048, 1024)
    assert cfg.deadline_s == 0.05 and cfg.setpoint == p["setpoint"]
    ctl = BudgetController(cfg)
    p2 = dict(p, min_budget=256, max_budget=512)
    kw = P.controller_changes(p2, ["min_budget", "max_budget"], 16, 2048)
    assert kw == {"min_budget": 256, "max_budget": 512, "initial_budget": 512}
    assert ctl.reconfigure(**kw) == 512  # current budget clamped immediately
    assert P.controller_changes(dict(p, setpoint=0.5), ["setpoint", "publish_embeddings"]) == {"setpoint": 0.5}


def test_effective_bounds():
    assert P.effective_bounds(64, 8192) == (64, 8192)
    assert P.effective_bounds(64, 8192, 16, 4096) == (64, 4096)
    assert P.effective_bounds(8, 8192, 16, None) == (16, 8192)
    assert P.effective_bounds(10_000, 20_000, 16, 4096) == (16, 4096)  # disjoint: the model's


def test_fusion_threshold_argument():
    assert P.fusion_threshold_arg(-1.0) is None
    assert P.fusion_threshold_arg(-0.3) is None
    assert P.fusion_threshold_arg(0.0) == 0.0 and P.fusion_threshold_arg(0.7) == 0.7


def test_deadline_from_parameter_or_sensor_period():
    est = P.PeriodEstimator()
    assert est.deadline_s(80.0) == pytest.approx(0.08)
    assert est.deadline_s(0.0) == P.DEFAULT_DEADLINE_S  # nothing measured yet
    t = 100.0
    for gap in [0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1]:  # one lost frame (0.3 s gap) does not matter
        est.tick(t)
        t += gap
    est.tick(t)
    assert est.period_s == pytest.approx(0.1)
    assert est.deadline_s(0.0) == pytest.approx(0.1)
    est.tick(t + 60.0)  # a long pause is not a period
    assert est.period_s == pytest.approx(0.1)


def test_plan_change_gives_the_new_set_and_the_controller_changes():
    cur = P.default_params()
    est = P.PeriodEstimator()
    new_p, ctl = P.plan_change(cur, {"deadline_ms": 80, "setpoint": 0.5}, est, 16, 2048)
    assert new_p["deadline_ms"] == 80.0 and isinstance(new_p["deadline_ms"], float) and new_p["setpoint"] == 0.5
    assert ctl == {"setpoint": 0.5, "deadline_s": pytest.approx(0.08)}
    assert cur["setpoint"] != 0.5  # the current set is not touched
    _, ctl = P.plan_change(cur, {"deadline_ms": 0.0}, est)  # back to the sensor period (none measured yet)
    assert ctl == {"deadline_s": P.DEFAULT_DEADLINE_S}
    with pytest.raises(ValueError, match="read-only"):
        P.plan_change(cur, {"model_path": "/other.pt"}, est)


def test_frame_budget_fixed_or_controlled_and_deadline_following_the_period():
    p = dict(P.default_params(), deadline_ms=0.0, initial_budget=300)
    ctl = BudgetController(P.controller_config(p, deadline_s=0.1, model_min=16, model_max=2048))
    assert P.frame_budget(ctl, p, 0.1) == (300, pytest.approx(0.1))
    assert P.frame_budget(ctl, p, 0.101)[1] == pytest.approx(0.1)  # within 2 %: unchanged
    assert P.frame_budget(ctl, p, 0.05)[1] == pytest.approx(0.05) and ctl.config.deadline_s == pytest.approx(0.05)
    fixed = dict(p, deadline_ms=80.0, controller_enabled=False)
    for _ in range(5):  # far under the deadline: the controller raises its budget
        ctl.update(0.001, ctl.budget)
    assert ctl.budget > 300
    assert P.frame_budget(ctl, fixed, 0.2) == (300, pytest.approx(0.05))  # the parameter deadline is not touched


def test_diagnostic_levels():
    base = dict(frames=10, last_over_deadline=False, over_streak=0, error_frames=5, predictor_failed=False)
    assert P.diagnostic_level(**base)[0] == P.OK
    assert P.diagnostic_level(**dict(base, frames=0)) == (P.OK, "waiting for input")
    assert P.diagnostic_level(**dict(base, last_over_deadline=True, over_streak=2))[0] == P.WARN
    assert P.diagnostic_level(**dict(base, last_over_deadline=True, over_streak=5))[0] == P.ERROR
    assert P.diagnostic_level(**dict(base, predictor_failed=True))[0] == P.ERROR
    assert P.diagnostic_level(**dict(base, decode_errors_recent=2))[0] == P.WARN


def test_shipped_params_file_covers_every_parameter():
    doc = yaml.safe_load((ROOT / "config" / "foundry.yaml").read_text())
    values = doc["/**/foundry"]["ros__parameters"]
    assert set(values) == set(P.SPECS_BY_NAME)
    assert P.validate_params(values) == []
    text = (ROOT / "config" / "foundry.yaml").read_text().splitlines()
    for name in values:  # every parameter has a comment line right above it
        i = next(k for k, line in enumerate(text) if line.strip().startswith(f"{name}:"))
        assert text[i - 1].strip().startswith("#"), name


def test_launch_file_compiles_and_builds_the_node(tmp_path, monkeypatch):
    from support.launch_stubs import LAUNCH_FILE, run_launch_file

    py_compile.compile(str(LAUNCH_FILE), doraise=True)
    # launch / launch_ros are not installable here: run the file against minimal stand-ins.
    args = {"model": "/m.pt", "input_topic": "/lidar", "device": "cuda", "backend": "tensorrt",
            "precision": "", "namespace": "robot1", "log_level": "warn", "use_sim_time": "true"}
    run = run_launch_file(tmp_path, monkeypatch, args)
    declared, node, config = run["declared"], run["node"], run["config"]
    assert declared["config"] == config
    assert {"model", "input_topic", "device", "backend"} <= set(declared)
    assert run["kind"] == "node" and node["package"] == "foundry_ros" and node["executable"] == "foundry-node"
    assert node["name"] == "foundry" and node["namespace"] == "robot1"
    assert node["parameters"] == [config, {"model_path": "/m.pt", "device": "cuda", "backend": "tensorrt",
                                           "input_topics": ["/lidar"], "use_sim_time": True}]
    assert node["ros_arguments"] == ["--log-level", "warn"]


def test_setup_installs_the_node_executable():
    setup_py = (ROOT / "setup.py").read_text()
    assert '"foundry-node = foundry_ros.node:main"' in setup_py
    cfg = (ROOT / "setup.cfg").read_text()
    assert "script_dir=$base/lib/foundry_ros" in cfg and "install_scripts=$base/lib/foundry_ros" in cfg
