"""Every published frame accounted for: sequence gaps, counters, report totals, QoS diagnostics (no ROS)."""
from __future__ import annotations

import pytest

from foundry_ros import dds
from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.diagnostics import diagnostic_values
from foundry_ros.frame_stats import FrameStats
from foundry_ros.model import ModelInfo
from foundry_ros.report import StageTimes, report_fields
from foundry_ros.sequence_gaps import SequenceGaps, publisher_key


def info(seq, gid=b"\x01\x02"):
    return {"source_timestamp": 1, "received_timestamp": 2, "publication_sequence_number": seq,
            "reception_sequence_number": None, "publisher_gid": {"implementation_identifier": "rmw", "data": gid}}


def test_sequence_gaps_count_what_never_arrived_per_publisher_and_topic():
    gaps = SequenceGaps()
    assert gaps.observe("/points", info(5)) == 0            # first message: what came before is not ours
    assert gaps.observe("/points", info(6)) == 0
    assert gaps.observe("/points", info(9)) == 2            # 7 and 8 never arrived
    assert gaps.observe("/points", info(3, gid=b"other")) == 0  # another publisher has its own count
    assert gaps.observe("/points", info(5, gid=b"other")) == 1
    assert gaps.observe("/lidar2", info(20)) == 0           # same publisher id on another topic
    assert gaps.observe("/points", info(2)) == 0            # restarted publisher: its count restarts
    assert gaps.observe("/points", info(4)) == 1
    assert gaps.publishers == 3


@pytest.mark.parametrize("bad", [None, {}, {"publication_sequence_number": None}, {"other": 1}])
def test_messages_without_sequence_numbers_count_nothing(bad):
    gaps = SequenceGaps()
    assert publisher_key("/points", bad) is None
    assert gaps.observe("/points", bad) == 0 and gaps.observe("/points", bad) == 0


def test_publisher_table_stays_bounded():
    gaps = SequenceGaps(max_publishers=4)
    for k in range(10):
        gaps.observe("/points", info(1, gid=bytes([k])))
    assert gaps.publishers == 4


def test_stats_totals_and_report_account_for_every_publication():
    """published = received + lost; received = processed + stale + too old + failed (+ one in the slot)."""
    stats = FrameStats()
    stats.received(replaced_stale=False, nbytes=1000)
    stats.received(replaced_stale=True, lost_before=3, nbytes=4000)   # a gap of 3, the first frame overwritten
    stats.received(replaced_stale=False)
    stats.dropped_age()
    stats.received(replaced_stale=False)
    stats.decode_error()
    stats.received(replaced_stale=False)
    record = stats.frame_done(0.05, 0.1, 10, 10)
    snap = stats.snapshot()
    assert (snap.received, snap.lost, snap.stale, snap.dropped_age, snap.frames) == (5, 3, 1, 1, 1)
    assert snap.largest_cloud_bytes == 4000
    in_slot = 1  # the last cloud received is still waiting for the worker
    assert snap.received == snap.frames + snap.stale + snap.dropped_age + snap.decode_errors + in_slot
    assert (record.received, record.stale_total, record.too_old, record.lost, record.failed) == (5, 1, 1, 3, 1)
    fields = report_fields(None, times=StageTimes(0.0, 0.0, 0.0, 0.0, 0.0, 0.05), points_in=0, budget=0,
                           deadline_s=0.1, record=record, model=ModelInfo())
    assert (fields["frames_received"], fields["frames_stale_total"], fields["frames_too_old"],
            fields["frames_lost"], fields["frames_failed"], fields["frame_index"]) == (5, 1, 1, 3, 1, 0)


def _diag(stats, p=None):
    p = p or P.default_params()
    ctl = BudgetController(P.controller_config(p, 0.1, 16, 2048))
    return diagnostic_values(stats.snapshot(), ctl, p, ModelInfo(backend="fake"), None, 64 * 2**20)


def test_incompatible_qos_turns_diagnostics_to_warn_with_the_reason():
    stats = FrameStats()
    assert _diag(stats)["level_msg"] == (P.OK, "waiting for input")
    stats.incompatible_qos("a publisher on /points offers RELIABILITY incompatible with qos_reliability=reliable")
    values = _diag(stats)
    level, message = values["level_msg"]
    assert level == P.WARN and "RELIABILITY" in message and "/points" in message and "1 event" in message
    assert values["incompatible_qos_events"] == 1
    # the node is still deaf (no frame): the WARN stays after the event is no longer recent
    assert _diag(stats)["level_msg"][0] == P.WARN
    stats.received(replaced_stale=False)
    stats.frame_done(0.01, 0.1, 1, 1)
    assert _diag(stats)["level_msg"] == (P.OK, "running")     # frames flow from a compatible publisher


def test_diagnostics_show_every_count_and_the_segment():
    stats = FrameStats()
    stats.received(replaced_stale=False, lost_before=2, nbytes=3 * 2**20)
    stats.messages_lost(1)
    values = _diag(stats)
    assert (values["frames_received"], values["frames_lost"], values["messages_lost_events"]) == (1, 2, 1)
    assert values["largest_cloud_mb"] == pytest.approx(3.0) and values["shm_segment_mb"] == pytest.approx(64.0)
    for key in ("frames_processed", "frames_dropped_stale", "frames_dropped_age", "decode_errors", "predictor_errors"):
        assert values[key] == 0


def test_segment_size_from_environment_and_for_large_clouds(tmp_path):
    assert dds.default_segment_bytes({}) == dds.SHM_SEGMENT_BYTES
    assert dds.default_segment_bytes({dds.SHM_SEGMENT_ENV: "256"}) == 256 * 2**20
    with pytest.raises(ValueError, match=dds.SHM_SEGMENT_ENV):
        dds.default_segment_bytes({dds.SHM_SEGMENT_ENV: "big"})
    assert dds.recommended_segment_bytes(1_000_000) == dds.SHM_SEGMENT_BYTES   # small clouds: the default
    assert dds.recommended_segment_bytes(64 * 2**20) == 192 * 2**20          # room for 3 messages
    env = dds.ros_env({dds.SHM_SEGMENT_ENV: "200"}, workdir=tmp_path)
    assert dds.profile_segment_bytes(env) == 200 * 2**20
    env = dds.ros_env({}, workdir=tmp_path / "b", shm_segment_bytes=dds.recommended_segment_bytes(100 * 2**20))
    assert dds.profile_segment_bytes(env) == 300 * 2**20
    assert dds.profile_segment_bytes({}) is None
    (tmp_path / "broken.xml").write_text("<dds><not closed")
    assert dds.profile_segment_bytes({"FASTDDS_DEFAULT_PROFILES_FILE": str(tmp_path / "broken.xml")}) is None
