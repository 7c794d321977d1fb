"""The managed (lifecycle) node: configure / activate / deactivate / cleanup / shutdown through the
real lifecycle_msgs services, on a node process with the fake predictor (foundry-node --lifecycle)."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("foundry_msgs.msg")
pytest.importorskip("lifecycle_msgs.srv")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

from support import TEST_DIR  # noqa: E402
from support.node_harness import TOPIC, Harness, make_cloud, node_process, random_cloud  # noqa: E402
from support.ros_session import TIMEOUT_S, ros_session  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

LIFECYCLE_NODE = [str(TEST_DIR / "foundry_node_fake.py"), "--lifecycle"]
OVERRIDES = f"""
foundry:
  ros__parameters:
    input_topics: ["{TOPIC}"]
    extra_fields: ["intensity"]
    deadline_ms: 500.0
    max_age_s: 5.0
    diagnostics_period_s: 0.2
"""


class Lifecycle:
    """Client of /foundry's lifecycle services."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.get = h.node.create_client(GetState, "/foundry/get_state")
        self.change = h.node.create_client(ChangeState, "/foundry/change_state")
        h.wait(lambda: self.get.service_is_ready() and self.change.service_is_ready(), "lifecycle services",
               timeout=60)

    def _call(self, client, request):
        fut = client.call_async(request)
        self.h.wait(fut.done, f"{type(request).__name__} answer", timeout=60)
        return fut.result()

    def state(self) -> int:
        return self._call(self.get, GetState.Request()).current_state.id

    def transition(self, tid: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=tid))).success


def _no_output_for(h: Harness, msg, seconds: float) -> bool:
    """Publish ``msg`` a few times for ``seconds``: True when no segments came back."""
    before = len(h.segments)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg.header.stamp = h.stamp()
        h.pub.publish(msg)
        h.ex.spin_once(timeout_sec=0.1)
    return len(h.segments) == before


def test_lifecycle_transitions_drive_model_inputs_and_outputs(tmp_path):
    xyz, intensity = random_cloud(200, seed=3)
    msg = make_cloud(xyz, intensity, 1, 200)
    with node_process(tmp_path, LIFECYCLE_NODE, OVERRIDES) as (child, log):
        with ros_session("foundry_lifecycle_client") as (node, ex):
            h = Harness(child, log, node, ex)
            lc = Lifecycle(h)
            assert lc.state() == State.PRIMARY_STATE_UNCONFIGURED
            # parameters are declared and settable before configure (checked by the rules alone)
            assert [r.successful for r in h.set_params(deadline_ms=80)] == [True]
            assert [r.successful for r in h.set_params(setpoint=5.0)] == [False]
            assert node.count_publishers("/foundry/report") == 0 and h.pub.get_subscription_count() == 0

            assert lc.transition(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == State.PRIMARY_STATE_INACTIVE
            h.wait(lambda: node.count_publishers("/foundry/report") > 0, "the report publisher after configure")
            h.fresh_diagnostics()
            assert h.last_diag()["state"] == "inactive" and h.last_diag()["deadline_ms"] == "80.000"
            assert "inactive" in h.diagnostics[-1].message
            assert h.pub.get_subscription_count() == 0          # configured but not listening

            assert lc.transition(Transition.TRANSITION_ACTIVATE)
            assert lc.state() == State.PRIMARY_STATE_ACTIVE
            h.wait(lambda: h.pub.get_subscription_count() > 0, "the input subscription after activate")
            seg, report, _ = h.roundtrip(msg)
            assert seg.width == 200 and report.points_in == 200

            assert lc.transition(Transition.TRANSITION_DEACTIVATE)
            assert lc.state() == State.PRIMARY_STATE_INACTIVE
            h.wait(lambda: h.pub.get_subscription_count() == 0, "no input subscription after deactivate")
            assert _no_output_for(h, msg, 1.5)                  # deactivated: nothing is published

            assert lc.transition(Transition.TRANSITION_CLEANUP)
            assert lc.state() == State.PRIMARY_STATE_UNCONFIGURED
            h.wait(lambda: node.count_publishers("/foundry/report") == 0, "no report publisher after cleanup")

            assert lc.transition(Transition.TRANSITION_CONFIGURE)  # the model is loaded again
            assert lc.transition(Transition.TRANSITION_ACTIVATE)
            h.wait(lambda: h.pub.get_subscription_count() > 0, "the input subscription after re-activation")
            seg, report, _ = h.roundtrip(msg)
            assert seg.width == 200 and report.frame_index == 0   # a fresh pipeline counts from 0

            assert lc.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert child.wait(timeout=TIMEOUT_S) == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("foundry node up") == 2 and "model freed" in text


def test_a_failed_configure_leaves_the_node_unconfigured_with_the_reason(tmp_path):
    node_argv = ["-m", "support.fakes", "--operating-points", "--lifecycle"]
    with node_process(tmp_path, node_argv, OVERRIDES) as (child, log):
        with ros_session("foundry_lifecycle_client") as (node, ex):
            h = Harness(child, log, node, ex)
            lc = Lifecycle(h)
            assert [r.successful for r in h.set_params(operating_point="no_such_point")] == [True]  # form is fine
            assert not lc.transition(Transition.TRANSITION_CONFIGURE)   # the model has no such point
            assert lc.state() == State.PRIMARY_STATE_UNCONFIGURED
            assert [r.successful for r in h.set_params(operating_point="auto")] == [True]
            assert lc.transition(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == State.PRIMARY_STATE_INACTIVE
            assert lc.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert child.wait(timeout=TIMEOUT_S) == 0
    text = log.read_text()
    assert "configure failed" in text and "no_such_point" in text
