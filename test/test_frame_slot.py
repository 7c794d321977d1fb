"""foundry_ros.frame_slot: the newest-frame slot and frame timing (no ROS)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from foundry_ros.frame_slot import Frame, NewestFrameSlot, frame_age_s, receive_time


def test_newest_frame_wins_and_overwrites_are_reported():
    slot = NewestFrameSlot()
    assert slot.put(Frame("a", 1.0, "/p")) is False
    assert slot.put(Frame("b", 2.0, "/p")) is True  # "a" was never taken: stale
    assert slot.take() == Frame("b", 2.0, "/p")
    assert slot.put(Frame("c", 3.0, "/q")) is False


def test_take_waits_for_a_frame_and_stop_wakes_it():
    slot = NewestFrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.extend([slot.take(), slot.take()]))
    worker.start()
    slot.put(Frame("a", 1.0, "/p"))
    worker.join(0.2)
    assert worker.is_alive()  # took "a", waiting for the next
    slot.stop()
    worker.join(5)
    assert not worker.is_alive() and got == [Frame("a", 1.0, "/p"), None] and slot.stopped
    slot.put(Frame("b", 2.0, "/p"))
    assert slot.take() is None  # stopped: frames are no longer handed out


def test_receive_time_subtracts_the_queueing_delay():
    now_ns = 1_000_000_000_000
    assert receive_time(50.0, {"received_timestamp": now_ns - 20_000_000}, now_ns) == pytest.approx(49.98)
    assert receive_time(50.0, None, now_ns) == 50.0
    assert receive_time(50.0, {"received_timestamp": 0}, now_ns) == 50.0            # not given
    assert receive_time(50.0, {"received_timestamp": now_ns - 5 * 10**9}, now_ns) == 50.0  # implausible
    assert receive_time(50.0, {"received_timestamp": now_ns + 10**6}, now_ns) == 50.0  # clock ahead
    assert receive_time(50.0, {"other": 1}, now_ns) == 50.0


def test_frame_age_from_the_stamp_or_the_receive_time():
    stamp = SimpleNamespace(sec=100, nanosec=500_000_000)
    assert frame_age_s(stamp, 0.0, 0.0, 101 * 10**9) == pytest.approx(0.5)
    assert frame_age_s(stamp, 0.0, 0.0, 100 * 10**9) == 0.0  # stamped in the future: not negative
    zero = SimpleNamespace(sec=0, nanosec=0)
    assert frame_age_s(zero, 10.0, 10.25, 123) == pytest.approx(0.25)


def test_waiting_says_whether_a_frame_is_parked():
    slot = NewestFrameSlot()
    assert not slot.waiting
    slot.put(Frame("a", 1.0, "/p"))
    assert slot.waiting
    slot.take()
    assert not slot.waiting
