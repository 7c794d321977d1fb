"""Stacked parameter files: ``foundry-node --params-file A --params-file B`` (B overrides A).

rcl itself loses B's value when A set the same parameter under the same node key and B's value has
another type or is an empty list (``deadline_ms: fast``, ``input_topics: []`` were dropped and the
node started on A's values). The node merges the files first (foundry_ros.params_files): tested here
as pure functions, as rcl reads the merged file, and end to end on a node process.
"""
from __future__ import annotations

import signal

import pytest
from yaml.nodes import SequenceNode

from foundry_ros.params_files import ParamsFileError, merge_params_files, merged_yaml, read_params_file

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

A = """
foundry:
  ros__parameters:
    deadline_ms: 10.0
    input_topics: ["/points"]
    model_path: ""
    group:
      x: 1
robot1:
  foundry:
    ros__parameters:
      setpoint: 0.5
"""
B = """
foundry:
  ros__parameters:
    deadline_ms: fast
    input_topics: []
    group.x: 1e3
    group.y: yes
    quoted: "80"
robot1/foundry:
  ros__parameters:
    setpoint: 0.7
/**:
  ros__parameters:
    use_sim_time: true
"""


def _files(tmp_path, *texts):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"p{i}.yaml")
        paths[-1].write_text(text)
    return paths


def _text(entries):
    """entry -> name -> the value's YAML text (a list of texts for a sequence)."""
    def plain(node):
        return [v.value for v in node.value] if isinstance(node, SequenceNode) else node.value

    return {entry: {name: plain(node) for name, node in params.items()} for entry, params in entries.items()}


def test_later_file_overrides_per_node_entry_and_name_keeping_the_yaml_text(tmp_path):
    merged = merge_params_files(_files(tmp_path, A, B))
    assert _text(merged) == {
        "foundry": {"deadline_ms": "fast", "input_topics": [], "model_path": "", "group.x": "1e3",
                    "group.y": "yes", "quoted": "80"},
        "robot1/foundry": {"setpoint": "0.7"},  # nested namespaces and a/b keys are one entry
        "/**": {"use_sim_time": "true"}}
    text = merged_yaml(merged)
    assert "deadline_ms: fast" in text and "input_topics: []" in text
    assert "group.x: 1e3" in text and "group.y: yes" in text  # plain text, as rcl types it (not PyYAML)
    assert 'quoted: "80"' in text  # still a string
    assert _text(read_params_file(_files(tmp_path / "again", text)[0])) == _text(merged)  # a fixed point


def test_not_a_parameters_file_is_refused_with_the_place(tmp_path):
    for text, fragment in [("[1, 2]", "must be a mapping"), ("ros__parameters: {a: 1}", "under a node name"),
                           ("foundry:\n  ros__parameters: [1]\n", "must be a mapping of parameter names"),
                           ("foundry: {ros__parameters: {a: 1}\n", "not valid YAML")]:
        [path] = _files(tmp_path, text)
        with pytest.raises(ParamsFileError, match=fragment):
            read_params_file(path)
    [empty] = _files(tmp_path, "")
    assert read_params_file(empty) == {} and merged_yaml({}) == "{}\n"


def _overrides_read_by_rcl(tmp_path, files) -> dict[str, dict[str, tuple]]:
    """namespace -> parameter -> (type, value) that rcl gives a node ``foundry`` in ``/`` and ``/robot1``
    for ``files`` merged into one parameters file."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    from support.ros_session import local_dds

    merged = tmp_path / "merged.yaml"
    merged.write_text(merged_yaml(merge_params_files(files)))
    got = {}
    with local_dds(tmp_path / "ros"):
        for ns in ("/", "/robot1"):
            ctx = Context()
            rclpy.init(args=["x", "--ros-args", "-r", f"__ns:={ns}", "--params-file", str(merged)], context=ctx,
                       signal_handler_options=SignalHandlerOptions.NO)
            try:
                node = rclpy.create_node("foundry", context=ctx)
                got[ns] = {k: (p.type_, p.value) for k, p in node._parameter_overrides.items()}
                node.destroy_node()
            finally:
                rclpy.shutdown(context=ctx)
    return got


def test_rcl_reads_the_merged_file_with_the_later_values(tmp_path):
    pytest.importorskip("rclpy", reason="ROS 2 wheels not installed")
    from rclpy.parameter import Parameter

    got = _overrides_read_by_rcl(tmp_path, _files(tmp_path, A, B))
    T = Parameter.Type
    root = got["/"]
    assert root["deadline_ms"] == (T.STRING, "fast")  # rcl given A and B directly: (DOUBLE, 10.0)
    assert root["input_topics"] == (T.NOT_SET, None)  # `[]`; rcl given A and B directly: ['/points']
    assert root["group.x"] == (T.DOUBLE, 1000.0) and root["group.y"] == (T.BOOL, True)
    assert root["quoted"] == (T.STRING, "80") and root["use_sim_time"] == (T.BOOL, True)
    assert got["/robot1"]["setpoint"] == (T.DOUBLE, 0.7)


def test_shipped_config_applies_in_any_namespace_and_a_plain_override_still_wins(tmp_path):
    """config/foundry.yaml's ``/**/foundry`` key reaches a namespaced node; a user's later ``foundry:``
    file overrides it (rcl: the later entry wins)."""
    pytest.importorskip("rclpy", reason="ROS 2 wheels not installed")
    from support import REPO_ROOT

    mine = tmp_path / "mine.yaml"
    mine.write_text("foundry:\n  ros__parameters:\n    setpoint: 0.5\n")
    got = _overrides_read_by_rcl(tmp_path, [REPO_ROOT / "config" / "foundry.yaml", mine])
    assert got["/robot1"]["input_topics"][1] == ["/points"] and got["/robot1"]["setpoint"][1] == 0.85
    assert got["/"]["setpoint"][1] == 0.5 and got["/"]["qos_depth"][1] == 2


# ------------------------------------------------------------------------------------------------
# the node process: shipped config + a second file


@pytest.fixture
def node_process():
    pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
    pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")
    from support.node_signals import NodeProcess
    return NodeProcess


SECOND = "foundry:\n  ros__parameters:\n    input_topics: [\"/test/stacked/points\"]\n"


@pytest.mark.parametrize("line, message", [
    ("deadline_ms: fast", "deadline_ms must be of type float, got 'fast'"),
    ("input_topics: []", "input_topics must hold at least one non-empty topic name, got []"),
    ("qos_depth: 0", "qos_depth must be >= 1, got 0"),
])
def test_invalid_value_in_the_second_file_is_fatal(tmp_path, node_process, line, message):
    for files in ("one file", "two files"):  # the same FATAL as when the value is in the only file
        text = SECOND + f"    {line}\n"
        if files == "one file":
            base = (tmp_path / "base.yaml")
            base.write_text(text)
            args = dict(params_files=[base])
        else:
            args = dict(overrides=text)
        with node_process(tmp_path / files.replace(" ", "_"), ["-m", "support.fake_node"], **args) as node:
            code = node.exit_code()
        log = node.text()
        assert code == 1, f"{files}: exit {code}\n{log[-3000:]}"
        assert "[FATAL]" in log and message in log, f"{files}:\n{log[-3000:]}"


def test_second_file_overrides_and_unknown_names_are_warned(tmp_path, node_process):
    text = SECOND + "    deadline_ms: 80\n    deadine_ms: 50.0\n    use_sim_time: false\n"
    with node_process(tmp_path, ["-m", "support.fake_node"], text,
                      extra=["--ros-args", "-p", "max_budgte:=10", "-p", "qos_overrides./x.publisher.depth:=3"]) as node:
        node.wait_for("foundry node up")
        node.send(signal.SIGINT)
        code = node.exit_code()
    log = node.text()
    assert code == 0, log[-3000:]
    assert "deadline=80.0 ms" in log and "inputs=['/test/stacked/points']" in log
    warnings = [line for line in log.splitlines() if "unknown parameter" in line]
    assert len(warnings) == 2 and all("[WARN]" in line for line in warnings), warnings
    assert "unknown parameter 'deadine_ms' (did you mean 'deadline_ms'?)" in log
    assert "unknown parameter 'max_budgte' (did you mean 'max_budget'?)" in log
