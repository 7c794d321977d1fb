"""Ctrl-C and SIGTERM end the node cleanly at every stage: exit code 0, no traceback.

The node runs as its own process (``main`` of foundry_ros.node, in a new session so that a signal can
go to its whole process group as a terminal's Ctrl-C does under ``ros2 launch``). Before the fix two
SIGINTs 20 ms apart ended it with exit -2 (the second one landed after Python had put back the
default SIGINT action during interpreter exit) or a KeyboardInterrupt traceback.
"""
from __future__ import annotations

import signal
import time

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")

from support.exports import export_task_model  # noqa: E402
from support.fake_node import WARM_UP_MARK  # noqa: E402
from support.node_signals import NodeProcess  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

FAKE_NODE = ["-m", "support.fake_node"]
REAL_NODE = ["-m", "foundry_ros.node"]
OVERRIDES = """
foundry:
  ros__parameters:
    input_topics: ["/test/shutdown/points"]
"""
UP = "foundry node up"
STOPPED = "foundry node stopped ("


def _assert_clean(node: NodeProcess, code: int, what: str) -> None:
    log = node.text()
    assert code == 0, f"{what}: exit {code}\n{log[-3000:]}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, f"{what}:\n{log[-3000:]}"
    assert STOPPED in log, f"{what}:\n{log[-3000:]}"


def _double_sigint(node: NodeProcess) -> None:
    node.send(signal.SIGINT)
    time.sleep(0.02)
    node.send(signal.SIGINT)


SENDERS = {
    "sigint_twice_20ms": _double_sigint,
    "sigint_to_process_group": lambda node: node.send(signal.SIGINT, group=True),
    "sigint_twice_to_process_group": lambda node: (node.send(signal.SIGINT, group=True), time.sleep(0.02),
                                                   node.send(signal.SIGINT, group=True)),
    "sigterm": lambda node: node.send(signal.SIGTERM),
}


@pytest.mark.parametrize("how", list(SENDERS))
def test_running_node_exits_0_without_traceback(tmp_path, how):
    for run, delay in enumerate((0.0, 0.05, 0.3)):  # the signal at different moments after start-up
        with NodeProcess(tmp_path / f"run{run}", FAKE_NODE, OVERRIDES) as node:
            node.wait_for(UP)
            time.sleep(delay)
            SENDERS[how](node)
            _assert_clean(node, node.exit_code(), f"{how}, run {run}")


@pytest.mark.parametrize("group", [False, True])
def test_sigint_during_start_up_exits_0_without_traceback(tmp_path, group):
    """SIGINT (twice) while the predictor warms up, before the executor spins."""
    with NodeProcess(tmp_path, [*FAKE_NODE, "--warm-up-s", "2"], OVERRIDES) as node:
        node.wait_for(WARM_UP_MARK)
        node.send(signal.SIGINT, group=group)
        time.sleep(0.02)
        node.send(signal.SIGINT, group=group)
        code = node.exit_code()
        _assert_clean(node, code, "SIGINT during warm-up")
        assert "foundry node failed" not in node.text()


def test_bad_parameters_still_fail_with_exit_1(tmp_path):
    """The clean-shutdown path does not swallow real start-up failures."""
    with NodeProcess(tmp_path, FAKE_NODE, OVERRIDES, extra=["--ros-args", "-p", "qos_depth:=0"]) as node:
        code = node.exit_code()
    assert code == 1 and "qos_depth must be >= 1" in node.text() and "Traceback" not in node.text()


@pytest.mark.slow
def test_real_node_ctrl_c_when_running_and_during_calibration(tmp_path):
    """`python -m foundry_ros.node` with a tiny exported model: two SIGINTs 20 ms apart once it is up;
    Ctrl-C to the process group while it calibrates its operating points (start-up, before spin)."""
    model = export_task_model(tmp_path)
    overrides = OVERRIDES + f'    model_path: "{model}"\n'
    with NodeProcess(tmp_path / "running", REAL_NODE, overrides) as node:
        node.wait_for(UP)
        _double_sigint(node)
        _assert_clean(node, node.exit_code(), "real node, SIGINT twice")
    with NodeProcess(tmp_path / "starting", REAL_NODE, overrides) as node:
        node.wait_for("predictor warm-up")
        node.send(signal.SIGINT, group=True)
        _assert_clean(node, node.exit_code(), "real node, Ctrl-C during calibration")
