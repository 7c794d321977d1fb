"""The node's newest-frame slot: one parked cloud, overwritten by a newer one, taken by the worker."""
from __future__ import annotations

import threading
from typing import Any, NamedTuple

__all__ = ["Frame", "NewestFrameSlot", "receive_time", "frame_age_s"]


class Frame(NamedTuple):
    """A received cloud: the message, its receive time (monotonic s) and its topic."""

    msg: Any
    recv_mono: float
    topic: str


class NewestFrameSlot:
    """Holds at most one frame; ``put`` overwrites, ``take`` blocks until a frame or ``stop``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._stopped = False

    def put(self, frame: Frame) -> bool:
        """Park ``frame``; True when it overwrote one that was not taken yet (a stale frame)."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
        return replaced

    def take(self) -> Frame | None:
        """The parked frame (the slot is emptied), waiting for one; None once stopped."""
        with self._cond:
            while self._frame is None and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            frame, self._frame = self._frame, None
        return frame

    @property
    def waiting(self) -> bool:
        """True while a frame is parked (not taken yet)."""
        return self._frame is not None

    def stop(self) -> None:
        """Wake every waiting ``take`` (they return None from now on)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped


def receive_time(now_mono: float, info: Any, now_ns: int) -> float:
    """Monotonic receive time of a message: ``now_mono`` minus the time it waited in the executor
    queue, from the rmw reception time (system clock) in ``info["received_timestamp"]`` when sane."""
    if not info:
        return now_mono
    try:
        received_ns = int(info["received_timestamp"])
    except (KeyError, TypeError, ValueError):
        return now_mono
    delay = (now_ns - received_ns) * 1e-9
    return now_mono - delay if received_ns > 0 and 0.0 < delay < 1.0 else now_mono


def frame_age_s(stamp: Any, recv_mono: float, now_mono: float, clock_now_ns: int) -> float:
    """Age of a frame: node clock minus its header stamp; time since receipt when the stamp is 0."""
    stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    if stamp_ns == 0:
        return now_mono - recv_mono
    return max((clock_now_ns - stamp_ns) * 1e-9, 0.0)
