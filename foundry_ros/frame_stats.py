"""Frame counters and latency statistics of the Foundry node (pure Python, thread-safe)."""
from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque

__all__ = ["LatencyStats", "FrameRecord", "StatsSnapshot", "FrameStats"]


class LatencyStats:
    """Sliding window of latencies (s) with percentiles."""

    def __init__(self, window: int = 200) -> None:
        self._values: deque[float] = deque(maxlen=window)

    def add(self, latency_s: float) -> None:
        self._values.append(float(latency_s))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float:
        """q in [0, 100]; NaN when empty (nearest-rank on the sorted window)."""
        if not self._values:
            return math.nan
        values = sorted(self._values)
        rank = min(len(values) - 1, max(0, math.ceil(q / 100.0 * len(values)) - 1))
        return values[rank]


@dataclasses.dataclass(frozen=True)
class FrameRecord:
    """Accounting of one processed frame, for its InferenceReport."""

    index: int  # 0-based among the processed frames
    stale: int  # clouds overwritten in the newest-frame slot since the previous processed frame
    # totals since the node started, this frame included
    received: int = 0   # clouds that reached the subscription callback
    stale_total: int = 0  # overwritten in the newest-frame slot before they were processed
    too_old: int = 0    # dropped by max_age_s
    lost: int = 0       # published but never received (sequence gaps)
    failed: int = 0     # undecodable clouds and predictor failures


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """All counters at one moment (see :class:`FrameStats`)."""

    received: int
    frames: int
    stale: int          # superseded by a newer cloud: overwritten in the slot, or abandoned late (abandoned)
    abandoned: int      # abandoned between stages, past the deadline with a newer cloud waiting
    dropped_age: int
    lost: int  # publications never received (sequence gaps: transport loss, reader history overwrite)
    decode_errors: int
    decode_errors_recent: int  # since the previous snapshot
    predictor_errors: int
    predictor_failed_last: bool
    publish_errors: int
    missing_extra: int
    messages_lost: int  # QoS message-lost events (a subset of ``lost`` where the rmw reports them)
    incompatible_qos: int
    incompatible_qos_recent: int  # since the previous snapshot
    incompatible_reason: str  # what the last incompatible-QoS event was about
    largest_cloud_bytes: int
    last_over_deadline: bool
    over_streak: int
    last_latency_s: float
    last_tokens: int
    last_budget: int
    latency_p50_s: float
    latency_p95_s: float


class FrameStats:
    """What happened to the clouds the node received: counters, deadline streak, latency window."""

    def __init__(self, initial_budget: int = 0, latency_window: int = 200) -> None:
        self._lock = threading.Lock()
        self._latency = LatencyStats(latency_window)
        self._n = dict.fromkeys(("received", "frames", "stale", "abandoned", "dropped_age", "lost", "decode_errors",
                                 "predictor_errors", "publish_errors", "missing_extra", "messages_lost",
                                 "incompatible_qos"), 0)
        self._incompatible_recent = 0
        self._incompatible_reason = ""
        self._largest_cloud_bytes = 0
        self._stale_reported = 0
        self._decode_errors_recent = 0
        self._predictor_failed_last = False
        self._last_over = False
        self._over_streak = 0
        self._last_latency_s = math.nan
        self._last_tokens = 0
        self._last_budget = int(initial_budget)

    def _add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._n[name] += n

    def received(self, replaced_stale: bool, lost_before: int = 0, nbytes: int = 0) -> None:
        """A cloud arrived; ``replaced_stale``: it overwrote one still waiting in the slot;
        ``lost_before``: publications of its publisher that never arrived before it (sequence gap);
        ``nbytes``: its data size."""
        with self._lock:
            self._n["received"] += 1
            self._n["stale"] += int(replaced_stale)
            self._n["lost"] += max(0, int(lost_before))
            self._largest_cloud_bytes = max(self._largest_cloud_bytes, int(nbytes))

    def dropped_age(self) -> None:
        self._add("dropped_age")

    def abandoned_late(self) -> None:
        """A frame taken from the slot was abandoned for a newer one: superseded, like a stale one."""
        with self._lock:
            self._n["abandoned"] += 1
            self._n["stale"] += 1

    def decode_error(self) -> None:
        with self._lock:
            self._n["decode_errors"] += 1
            self._decode_errors_recent += 1

    def predictor_error(self) -> None:
        with self._lock:
            self._n["predictor_errors"] += 1
            self._predictor_failed_last = True

    def publish_error(self) -> None:
        self._add("publish_errors")

    def missing_extra(self) -> None:
        self._add("missing_extra")

    @property
    def abandoned_total(self) -> int:
        """Frames abandoned late so far."""
        return self._n["abandoned"]

    @property
    def lost_total(self) -> int:
        """Publications never received so far (sequence gaps)."""
        return self._n["lost"]

    def messages_lost(self, n: int) -> None:
        self._add("messages_lost", int(n))

    def incompatible_qos(self, reason: str = "") -> None:
        """A publisher offered QoS this subscription cannot match; ``reason`` says which and how."""
        with self._lock:
            self._incompatible_reason = str(reason)
            self._n["incompatible_qos"] += 1
            self._incompatible_recent += 1

    def frame_done(self, latency_s: float, deadline_s: float, tokens: int, budget: int) -> FrameRecord:
        """Count a published frame (receive -> publish ``latency_s``); returns its index and stale count."""
        with self._lock:
            n = self._n
            record = FrameRecord(n["frames"], n["stale"] - self._stale_reported, received=n["received"],
                                 stale_total=n["stale"], too_old=n["dropped_age"], lost=n["lost"],
                                 failed=n["decode_errors"] + n["predictor_errors"])
            self._n["frames"] += 1
            self._stale_reported = self._n["stale"]
            self._predictor_failed_last = False
            self._last_over = latency_s > deadline_s
            self._over_streak = self._over_streak + 1 if self._last_over else 0
            self._last_latency_s, self._last_tokens, self._last_budget = latency_s, int(tokens), int(budget)
            self._latency.add(latency_s)
        return record

    def snapshot(self) -> StatsSnapshot:
        """The counters now; restarts the count of recent decode errors."""
        with self._lock:
            snap = StatsSnapshot(
                **self._n, decode_errors_recent=self._decode_errors_recent,
                incompatible_qos_recent=self._incompatible_recent, incompatible_reason=self._incompatible_reason,
                largest_cloud_bytes=self._largest_cloud_bytes,
                predictor_failed_last=self._predictor_failed_last, last_over_deadline=self._last_over,
                over_streak=self._over_streak, last_latency_s=self._last_latency_s, last_tokens=self._last_tokens,
                last_budget=self._last_budget, latency_p50_s=self._latency.percentile(50),
                latency_p95_s=self._latency.percentile(95))
            self._decode_errors_recent = 0
            self._incompatible_recent = 0
        return snap
