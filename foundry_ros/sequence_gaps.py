"""Frames lost before they reach the node, counted from the publishers' sequence numbers (pure Python).

Every DDS sample carries its writer's sequence number (rclpy ``MessageInfo``:
``publication_sequence_number`` and ``publisher_gid``). A jump from n to n + k + 1 on one publisher
means k of its messages never reached the subscription callback: lost on the transport (best-effort
fragments, a shared-memory segment too small for the cloud) or overwritten in the reader's KEEP_LAST
history while the executor was busy. Neither shows up as a QoS message-lost event in every case, so
this is the count that makes every published frame accounted for.

Rules: the first message of a publisher counts no gap (what it sent before matching is not ours); a
sequence number that goes backwards (publisher restarted with the same id) restarts its count; a
message without sequence information counts nothing.
"""
from __future__ import annotations

import threading
from typing import Any, Hashable, Mapping

__all__ = ["SequenceGaps", "publisher_key"]


def publisher_key(topic: str, info: Mapping[str, Any] | None) -> tuple[Hashable, int] | None:
    """((topic, publisher id), sequence number) of a message's info, None without sequence numbers."""
    if not info:
        return None
    try:
        seq = info["publication_sequence_number"]
    except (KeyError, TypeError):
        return None
    if seq is None:
        return None
    gid = info.get("publisher_gid") if hasattr(info, "get") else None
    data = gid.get("data") if isinstance(gid, Mapping) else gid
    ident = bytes(data) if isinstance(data, (bytes, bytearray, list, tuple)) else data
    return (topic, ident), int(seq)


class SequenceGaps:
    """Last sequence number per (topic, publisher); :meth:`observe` returns the messages missed."""

    def __init__(self, max_publishers: int = 1024) -> None:
        self._last: dict[Hashable, int] = {}
        self._max = int(max_publishers)
        self._lock = threading.Lock()

    def observe(self, topic: str, info: Mapping[str, Any] | None) -> int:
        """Messages of this message's publisher that were never seen before it (0 when none / unknown)."""
        key = publisher_key(topic, info)
        if key is None:
            return 0
        pub, seq = key
        with self._lock:
            last = self._last.get(pub)
            if last is None and len(self._last) >= self._max:  # bound the table (publishers come and go)
                self._last.pop(next(iter(self._last)))
            self._last[pub] = seq
        if last is None or seq <= last:
            return 0
        return seq - last - 1

    @property
    def publishers(self) -> int:
        return len(self._last)
