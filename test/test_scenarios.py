"""Scenario definitions and phase logic (pure), the benchmark's aggregation, and the bounded CPU hog."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from foundry_ros import scenarios as S
from foundry_ros.bench_adaptation import SCHEMA, aggregate, calibrated_points
from foundry_ros.cpu_hog import MAX_SECONDS, CpuHog, spin
from support import REPO_ROOT


# ------------------------------------------------------------------------------------------------
# definitions and phases

def test_scenarios_and_their_phase_boundaries():
    assert S.scenario_names("all") == ["steady", "deadline-step", "cpu-hog"]
    assert S.scenario_names("cpu-hog") == ["cpu-hog"]
    with pytest.raises(ValueError, match="unknown scenario"):
        S.scenario_names("nope")
    step, hog = S.SCENARIOS["deadline-step"], S.SCENARIOS["cpu-hog"]
    assert S.SCENARIOS["steady"].planned_times(30.0) == [] and S.SCENARIOS["steady"].params == {}
    assert step.params == {"deadline_ms": 100.0} and step.events[0].value == 50.0
    assert step.planned_times(30.0) == pytest.approx([10.0]) and step.uses_parameter_service and not step.uses_hog
    assert hog.planned_times(30.0) == pytest.approx([10.0, 20.0]) and hog.hog_window_s(30.0) == pytest.approx((10, 20))
    assert hog.uses_hog and not hog.uses_parameter_service and step.hog_window_s(30.0) is None
    assert [s.key for s in S.SCENARIOS.values()] == ["steady", "deadline_step", "cpu_hog"]


def test_invalid_scenarios_are_errors():
    with pytest.raises(ValueError, match="phases"):
        S.Scenario("x", "", ("a",), (S.Event(0.5, "hog_start"),))
    with pytest.raises(ValueError, match="time order"):
        S.Scenario("x", "", ("a", "b", "c"), (S.Event(0.6, "hog_start"), S.Event(0.3, "hog_stop")))
    with pytest.raises(ValueError, match="fraction"):
        S.Event(1.5, "hog_start")
    with pytest.raises(ValueError, match="deadline"):
        S.Event(0.5, "deadline")
    with pytest.raises(ValueError, match="kind"):
        S.Event(0.5, "reboot")


def test_frames_belong_to_the_phase_they_arrived_in():
    times = [0.1 * i for i in range(10)]                     # 0.0 .. 0.9 s
    assert S.first_frame_at(times, 0.35) == 4 and S.first_frame_at(times, 0.3) == 3
    assert S.first_frame_at(times, 5.0) == 10 and S.first_frame_at([], 1.0) == 0
    assert S.phase_starts(times, [0.3, 0.65]) == [0, 3, 7]
    assert S.phase_of_frames(times, [0.3, 0.65]) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert S.phase_of_frames(times, []) == [0] * 10
    assert S.phase_of_frames(times, [5.0]) == [0] * 10      # an event after the last frame


# ------------------------------------------------------------------------------------------------
# settle / recover on synthetic traces

def test_settle_frames():
    assert S.settle_frames([True] * 7) == 0
    assert S.settle_frames([False, False, True, True, True, True, True]) == 2
    # a hit run shorter than 5 frames is not settled; the count starts again after the miss
    assert S.settle_frames([False, True, True, True, True, False, True, True, True, True, True]) == 6
    assert S.settle_frames([False, True, True, True, True]) is None
    assert S.settle_frames([]) is None
    assert S.settle_frames([False, True, True], hold=2) == 1
    with pytest.raises(ValueError):
        S.settle_frames([True], hold=0)


def test_held_and_recovered_points():
    assert S.held_point([0, 2, 2, 2, 1]) == 2                # lower median of the last frames
    assert S.held_point([2, 2, 1, 1]) == 1
    assert S.held_point(list(range(30)), window=3) == 28
    assert S.held_point([]) is None
    assert S.recover_frames([0, 0, 1, 2, 2], 2) == 3
    assert S.recover_frames([2, 0], 1) == 0
    assert S.recover_frames([0, 1, 1], 2) is None


def test_point_ranks_from_names_or_budgets():
    ranks, order = S.point_ranks(["p2k", "p8k", "p4k", "p2k"], ["p2k", "p4k", "p8k"])
    assert ranks == [0, 2, 1, 0] and order == ["p2k", "p4k", "p8k"]
    ranks, order = S.point_ranks(["a", "x", "b"], ["a", "b"])          # unknown names appended
    assert ranks == [0, 2, 1] and order == ["a", "b", "x"]
    ranks, order = S.point_ranks(["", "", ""], ["a"], [64, 128.0, 96])  # no names: budgets as ranks
    assert ranks == [64, 128, 96] and order == []


def test_deadline_step_metrics_on_a_synthetic_trace():
    sc = S.SCENARIOS["deadline-step"]
    n = 30
    times = [0.1 * i for i in range(n)]                      # step at 1.0 s = frame 10
    deadline = [100.0] * 10 + [50.0] * 20
    latency = [70.0] * 10 + [70.0, 65.0, 40.0, 60.0] + [45.0] * 16   # 3 misses, one more, then within
    m = S.scenario_metrics(sc, times, latency, deadline, [2] * 10 + [1] * 20, [1.0])
    assert m["step_frame"] == 10 and m["settle_frames"] == 4
    assert m["hit_rate_after_settle"] == pytest.approx(1.0)
    latency[20] = 80.0                                       # a miss after settling lowers the rate
    m = S.scenario_metrics(sc, times, latency, deadline, [1] * n, [1.0])
    assert m["settle_frames"] == 4 and m["hit_rate_after_settle"] == pytest.approx(15 / 16)
    m = S.scenario_metrics(sc, times, [99.0] * n, deadline, [1] * n, [1.0])
    assert m["settle_frames"] is None and m["hit_rate_after_settle"] is None
    with pytest.raises(ValueError, match="event times"):
        S.scenario_metrics(sc, times, latency, deadline, [1] * n, [])


def test_cpu_hog_metrics_on_a_synthetic_trace():
    sc = S.SCENARIOS["cpu-hog"]
    order = ["p2k", "p4k", "p8k"]
    times = [0.1 * i for i in range(30)]                     # hog from frame 10 to frame 20
    deadline = [100.0] * 30
    latency = [60.0] * 10 + [150.0, 120.0] + [90.0] * 8 + [40.0] * 10
    ranks = [2] * 10 + [2, 1, 0, 0, 0, 0, 0, 0, 0, 0] + [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    m = S.scenario_metrics(sc, times, latency, deadline, ranks, [1.0, 2.0], order)
    assert (m["hog_start_frame"], m["hog_stop_frame"]) == (10, 20)
    assert m["settle_frames"] == 2 and m["hit_rate_after_settle"] == pytest.approx(1.0)
    assert m["top_point"] == "p8k" and m["recover_frames"] == 5
    # the settle window must fit inside the hog: 4 hits before it ends are not settled
    late = [60.0] * 10 + [150.0] * 6 + [90.0] * 4 + [40.0] * 10
    m = S.scenario_metrics(sc, times, late, deadline, ranks, [1.0, 2.0], order)
    assert m["settle_frames"] is None and m["hit_rate_after_settle"] is None
    # the top point is the one held before the hog (the node may be there at once), or never reached
    m = S.scenario_metrics(sc, times, latency, deadline, [1] * 25 + [0] * 5, [1.0, 2.0], order)
    assert m["top_point"] == "p4k" and m["recover_frames"] == 0
    m = S.scenario_metrics(sc, times, latency, deadline, [2] * 10 + [0] * 20, [1.0, 2.0], order)
    assert m["recover_frames"] is None
    # no frame before the hog: the richest point reported is the top
    m = S.scenario_metrics(sc, times, latency, deadline, [0] * 5 + [2] * 25, [0.0, 2.0], order)
    assert m["hog_start_frame"] == 0 and m["top_point"] == "p8k"


def test_steady_has_no_scenario_fields():
    assert S.scenario_metrics(S.SCENARIOS["steady"], [0.0, 0.1], [1.0, 2.0], [5.0, 5.0], [0, 0], []) == {}


def test_parse_the_nodes_calibration_table():
    log = """[INFO] [1.2] [foundry]: predictor warm-up: 1904 ms
[INFO] [1.3] [foundry]: operating points (cheapest first):
point  points  centers  budget  mIoU  cost ms  source      ladder
p2k    2048    64       16      32.5  59.74    calibrated  yes
p4k    4096    128      all     ?     186.59   model card  no
[INFO] [1.4] [foundry]: foundry node up: backend=torch-cpu
"""
    rows = S.parse_operating_points(log)
    assert rows == [{"name": "p2k", "points": 2048, "centers": 64, "budget": 16, "miou": 32.5, "latency_ms": 59.74},
                    {"name": "p4k", "points": 4096, "centers": 128, "budget": None, "miou": None,
                     "latency_ms": 186.59}]
    assert S.parse_operating_points("[INFO] [1.0] [foundry]: foundry node up") == []


def test_median_and_the_benchmark_schema():
    assert S.median_or_none([3, None, 1, 2]) == 2 and S.median_or_none([1, 2]) == 1.5
    assert S.median_or_none([None, float("nan")]) is None
    runs = {"steady": [{"frames": 300, "hit_rate_after_10": 0.9, "p95_ms": 80.0, "mean_miou": 30.0},
                       None, {"frames": 298, "hit_rate_after_10": 1.0, "p95_ms": 90.0, "mean_miou": 32.0},
                       {"frames": 299, "hit_rate_after_10": 0.95, "p95_ms": 70.0, "mean_miou": 31.0}],
            "cpu_hog": [{"settle_frames": None, "hit_rate_after_settle": None, "recover_frames": 3}],
            "dense_sweep": [{"mean_points_in": 131000.0, "hit_rate_after_10": 0.5}]}
    out = aggregate(runs)
    assert {k: set(v) for k, v in out.items()} == {k: set(f) for k, (_, f) in SCHEMA.items()}
    assert out["steady"] == {"frames": 299, "hit_rate_after_10": 0.95, "hit_rate_after_10_all_frames": None,
                             "p95_ms": 80.0, "mean_miou": 31.0}
    assert out["cpu_hog"] == {"settle_frames": None, "hit_rate_after_settle": None, "recover_frames": 3}
    assert out["deadline_step"] == {"settle_frames": None, "hit_rate_after_settle": None}
    assert out["dense_sweep"] == {"points": 131000, "hit_rate_after_10": 0.5, "hit_rate_after_10_all_frames": None}
    row = {"name": "a", "points": 1, "centers": 2, "budget": 3, "miou": 4.0}
    pts = calibrated_points([[{**row, "latency_ms": 10.0}], [], [{**row, "latency_ms": 30.0}],
                             [{**row, "latency_ms": 12.0}]])
    assert pts == [{**row, "latency_ms": 12.0}] and calibrated_points([[], []]) == []


# ------------------------------------------------------------------------------------------------
# the CPU hog

def _gone(pid: int, within_s: float) -> bool:
    t_end = time.monotonic() + within_s
    while time.monotonic() < t_end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_spin_is_bounded_in_time():
    t0 = time.monotonic()
    assert 0.05 <= spin(0.05) < 0.5 and time.monotonic() - t0 < 0.5
    assert spin(-1.0) < 0.05
    assert MAX_SECONDS <= 600.0


def test_hog_ends_by_itself_and_is_pinned():
    hog = CpuHog(seconds=0.6).start()
    try:
        if hasattr(os, "sched_getaffinity"):
            t_end = time.monotonic() + 5.0              # the child pins itself once it runs
            while os.sched_getaffinity(hog.pid) != {hog.core} and time.monotonic() < t_end:
                time.sleep(0.02)
            assert os.sched_getaffinity(hog.pid) == {hog.core}
        hog.proc.wait(timeout=10.0)
        assert hog.proc.returncode == 0 and not hog.running
    finally:
        hog.stop()


def test_hog_is_killed_on_stop_and_on_leaving_a_with_block():
    hog = CpuHog(seconds=60.0).start()
    assert hog.running
    t0 = time.monotonic()
    assert hog.stop() is not None and not hog.running and time.monotonic() - t0 < 3.0
    assert hog.stop() is not None                        # idempotent
    with pytest.raises(RuntimeError):
        hog.start()
    with pytest.raises(KeyboardInterrupt):
        with CpuHog(seconds=60.0) as hog2:
            assert hog2.running
            raise KeyboardInterrupt
    assert not hog2.running
    with pytest.raises(ValueError):
        CpuHog(seconds=0)
    assert CpuHog(seconds=1e6).seconds == MAX_SECONDS


def test_hog_dies_with_its_parent():
    code = ("import os, sys; from foundry_ros.cpu_hog import CpuHog; h = CpuHog(60.0).start(); "
            "print(h.pid, flush=True); os._exit(0)")         # the parent vanishes without stopping it
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True,
                         timeout=30)
    pid = int(out.stdout.split()[0])
    assert _gone(pid, 5.0), "the hog outlived its parent"


def test_demo_summary_gives_each_chosen_points_median_latency():
    from foundry_ros.demo import point_latency_p50
    reps = [{"operating_point": "p2k", "latency_ms": v} for v in (40.0, 50.0, 46.0)] + \
        [{"operating_point": "p6k", "latency_ms": 61.0}]
    assert point_latency_p50(reps, ["p2k", "p4k", "p6k"]) == {"p2k": 46.0, "p6k": 61.0}


def test_all_frames_hit_rate_counts_superseded_clouds_as_misses():
    from foundry_ros.demo import all_frames_hit_rate
    reports = [{"latency_ms": 50.0, "deadline_ms": 100.0, "frames_dropped_stale": 0},
               {"latency_ms": 150.0, "deadline_ms": 100.0, "frames_dropped_stale": 0},
               {"latency_ms": 60.0, "deadline_ms": 100.0, "frames_dropped_stale": 2}]   # 2 superseded before it
    assert all_frames_hit_rate(reports) == pytest.approx(2 / 5)
    assert all_frames_hit_rate([]) == 0.0
