"""abandon_late_frames: the node's abandon callback (no DDS: the node method on a stand-in node)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")

from foundry_ros.frame_slot import Frame, NewestFrameSlot  # noqa: E402
from foundry_ros.node import FoundryNode  # noqa: E402
from foundry_ros.params import FrameControl  # noqa: E402


def _stand_in(clock_ns: int) -> SimpleNamespace:
    return SimpleNamespace(_slot=NewestFrameSlot(),
                           get_clock=lambda: SimpleNamespace(now=lambda: SimpleNamespace(nanoseconds=clock_ns)))


def _frame(stamp_ns: int) -> Frame:
    stamp = SimpleNamespace(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return Frame(SimpleNamespace(header=SimpleNamespace(stamp=stamp)), 0.0, "/points")


@pytest.mark.parametrize("age_ms, newer_waiting, abandon", [(150, True, True), (150, False, False),
                                                            (50, True, False), (50, False, False)])
def test_abandon_only_past_the_deadline_with_a_newer_cloud_waiting(age_ms, newer_waiting, abandon):
    now = 1_700_000_000 * 10**9
    node = _stand_in(now)
    if newer_waiting:
        node._slot.put(Frame("newer", 1.0, "/points"))
    check = FoundryNode._abandon_check(node, _frame(now - age_ms * 10**6), FrameControl(None, "p1k", 0.1),
                                       {"abandon_late_frames": True})
    assert check() is abandon


def test_no_callback_when_the_parameter_is_off():
    node = _stand_in(0)
    assert FoundryNode._abandon_check(node, _frame(0), FrameControl(16, "", 0.1), {"abandon_late_frames": False}) is None
