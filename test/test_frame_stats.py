"""foundry_ros.frame_stats: the node's counters and latency window, without ROS."""
from __future__ import annotations

import math
import threading

import pytest

from foundry_ros.frame_stats import FrameRecord, FrameStats, LatencyStats


def test_latency_percentiles():
    stats = LatencyStats(window=100)
    assert math.isnan(stats.percentile(50)) and len(stats) == 0
    for v in range(1, 101):
        stats.add(v / 1000)
    assert stats.percentile(50) == pytest.approx(0.050)
    assert stats.percentile(95) == pytest.approx(0.095)
    stats.add(1.0)  # the window slides: 0.001 leaves
    assert len(stats) == 100 and stats.percentile(0) == pytest.approx(0.002)


def test_a_fresh_snapshot_is_all_zero():
    snap = FrameStats(initial_budget=512).snapshot()
    assert (snap.frames, snap.received, snap.stale, snap.over_streak) == (0, 0, 0, 0)
    assert snap.last_budget == 512 and math.isnan(snap.last_latency_s) and math.isnan(snap.latency_p95_s)
    assert not snap.predictor_failed_last and not snap.last_over_deadline


def _index_stale(record: FrameRecord) -> tuple[int, int]:
    return record.index, record.stale


def test_stale_frames_are_reported_once_with_the_next_frame():
    stats = FrameStats()
    for replaced in (False, True, True):  # two clouds overwritten before the worker took one
        stats.received(replaced_stale=replaced)
    record = stats.frame_done(0.01, 0.1, 64, 128)
    assert (record.index, record.stale, record.stale_total, record.received) == (0, 2, 2, 3)
    assert _index_stale(stats.frame_done(0.01, 0.1, 64, 128)) == (1, 0)
    stats.received(replaced_stale=True)
    assert _index_stale(stats.frame_done(0.01, 0.1, 64, 128)) == (2, 1)
    snap = stats.snapshot()
    assert (snap.received, snap.stale, snap.frames) == (4, 3, 3)


def test_deadline_streak_latency_and_last_frame():
    stats = FrameStats()
    for latency in (0.05, 0.2, 0.3):
        stats.frame_done(latency, 0.1, 100, 256)
    snap = stats.snapshot()
    assert snap.last_over_deadline and snap.over_streak == 2
    assert (snap.last_latency_s, snap.last_tokens, snap.last_budget) == (0.3, 100, 256)
    assert snap.latency_p50_s == pytest.approx(0.2) and snap.latency_p95_s == pytest.approx(0.3)
    stats.frame_done(0.01, 0.1, 100, 256)
    assert stats.snapshot().over_streak == 0


def test_errors_and_the_recent_decode_errors():
    stats = FrameStats()
    stats.decode_error()
    stats.decode_error()
    stats.predictor_error()
    stats.dropped_age()
    stats.publish_error()
    stats.missing_extra()
    stats.messages_lost(3)
    stats.incompatible_qos()
    snap = stats.snapshot()
    assert (snap.decode_errors, snap.decode_errors_recent, snap.predictor_errors) == (2, 2, 1)
    assert (snap.dropped_age, snap.publish_errors, snap.missing_extra) == (1, 1, 1)
    assert (snap.messages_lost, snap.incompatible_qos) == (3, 1)
    assert snap.predictor_failed_last
    again = stats.snapshot()  # "recent" restarts at every snapshot, the totals do not
    assert (again.decode_errors, again.decode_errors_recent) == (2, 0)
    stats.frame_done(0.01, 0.1, 1, 1)  # a good frame clears the failure flag
    assert not stats.snapshot().predictor_failed_last


def test_counts_from_many_threads_add_up():
    stats = FrameStats()

    def work():
        for _ in range(1000):
            stats.received(replaced_stale=True)
            stats.decode_error()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert (snap.received, snap.stale, snap.decode_errors) == (4000, 4000, 4000)


def test_an_abandoned_frame_counts_as_stale_and_as_abandoned():
    stats = FrameStats()
    stats.received(replaced_stale=False)
    stats.abandoned_late()                       # taken, then abandoned for a newer cloud
    stats.received(replaced_stale=False)
    record = stats.frame_done(0.05, 0.1, tokens=16, budget=16)
    snap = stats.snapshot()
    assert (snap.stale, snap.abandoned, stats.abandoned_total) == (1, 1, 1)
    assert record.stale == 1 and record.stale_total == 1       # every received cloud is accounted once
    assert snap.received == snap.frames + snap.stale
