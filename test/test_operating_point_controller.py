"""OperatingPointController against a simulated plant: per-point cost x load, noise and spikes (deterministic)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from foundry_core.configs import OperatingPoint
from foundry_ros.operating_points import (OperatingPointConfig, OperatingPointController, PointCost,
                                          calibration_table, ladder_order, point_costs)

DEADLINE = 0.1
SETPOINT = 0.8
TARGET = DEADLINE * SETPOINT  # 80 ms; climbing needs <= 72 ms (hysteresis 0.1)
COSTS = [0.008, 0.014, 0.022, 0.034, 0.056, 0.090]  # true cost of each point at load 1, s
NAMES = [f"p{i}" for i in range(len(COSTS))]
RICHEST_FEASIBLE = 4  # 56 ms fits 80 ms (with room to climb to it); 90 ms does not
SEEDS = [0, 1, 2, 3]


def make(costs=COSTS, calibration=1.0, **kw) -> OperatingPointController:
    cfg = dict(deadline_s=DEADLINE, setpoint=SETPOINT, hysteresis=0.1, climb_frames=5)
    cfg.update(kw)
    return OperatingPointController([PointCost(n, c * calibration) for n, c in zip(NAMES, costs)],
                                    OperatingPointConfig(**cfg))


def run_plant(ctl, n, *, load=lambda k: 1.0, noise=0.05, seed=0, spikes=(), events=None, costs=COSTS,
              overhead=0.0, report_overhead=False):
    """Latency of frame k = (overhead + cost[point] * load(k)) * (1 + noise * N(0, 1)); a spike is 1.5 s.
    ``report_overhead``: the overhead (with its own noise) is measured and given to the controller.

    Returns (rank of the point of every frame, clean latency, measured latency)."""
    rng = np.random.default_rng(seed)
    ranks, clean, measured = [], [], []
    for k in range(n):
        if events and k in events:
            events[k](ctl)
        name = ctl.point
        i = NAMES.index(name)
        c = overhead + costs[i] * load(k)
        over = None
        if report_overhead:
            over = overhead * (1.0 + noise * rng.standard_normal())
            lat = over + (c - overhead) * (1.0 + noise * rng.standard_normal())
        else:
            lat = c * (1.0 + noise * rng.standard_normal())
        if k in spikes:
            lat = 1.5
        ranks.append(i)
        clean.append(c)
        measured.append(lat)
        assert ctl.update(lat, name, over) in NAMES
    return np.array(ranks), np.array(clean), np.array(measured)


def switches(ranks) -> int:
    return int(np.count_nonzero(np.diff(ranks)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("calibration", [1.0, 0.7, 1.4])  # calibrated costs right, too low, too high
def test_converges_to_the_richest_feasible_point(seed, calibration):
    ctl = make(calibration=calibration)
    ranks, clean, _ = run_plant(ctl, 60, seed=seed)
    assert np.all(ranks[15:] == RICHEST_FEASIBLE), ranks
    assert np.all(clean[15:] <= TARGET)
    st = ctl.state
    assert st.point == NAMES[RICHEST_FEASIBLE]
    assert st.load_factor == pytest.approx(1.0 / calibration, rel=0.1)
    assert st.predicted_latency_s == pytest.approx(COSTS[RICHEST_FEASIBLE], rel=0.1)


@pytest.mark.parametrize("seed", SEEDS)
def test_starts_at_the_richest_point_the_calibration_fits(seed):
    assert make().point == NAMES[RICHEST_FEASIBLE]
    assert make(deadline_s=0.05).point == "p3"  # 34 ms fits 40 ms
    assert make(deadline_s=0.001).point == "p0"  # nothing fits: the cheapest


@pytest.mark.parametrize("seed", SEEDS)
def test_load_step_followed_down_at_once_and_back_up(seed):
    ctl = make()
    load = lambda k: 1.8 if 50 <= k < 120 else 1.0  # noqa: E731
    ranks, clean, _ = run_plant(ctl, 200, load=load, seed=seed)
    assert np.all(ranks[30:50] == RICHEST_FEASIBLE)
    # within 3 frames of the step the point fits the loaded plant, and stays feasible
    down = next(k for k in range(50, 120) if clean[k] <= TARGET)
    assert down <= 53, ranks[48:60]
    assert np.all(clean[down:120] <= TARGET), (ranks[48:120], clean[48:120])
    assert ranks[60:120].max() == 3  # the richest point that fits 1.8 x load (61 ms)
    # within 30 frames of the end of the load, back at the richest point
    up = next(k for k in range(120, 200) if ranks[k] == RICHEST_FEASIBLE)
    assert up <= 150, ranks[118:160]
    assert np.all(ranks[up:] == RICHEST_FEASIBLE)
    assert ctl.state.load_changes >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_load_step_seen_on_one_point_moves_the_predictions_of_all(seed):
    ctl = make()
    run_plant(ctl, 40, seed=seed)
    before = {n: ctl.predict(n) for n in NAMES}
    run_plant(ctl, 10, load=lambda k: 2.0, seed=seed + 100)
    for n in NAMES:
        assert ctl.predict(n) == pytest.approx(2.0 * before[n], rel=0.15), n


@pytest.mark.parametrize("seed", SEEDS)
def test_deadline_change_met_within_ten_frames(seed):
    ctl = make()
    events = {60: lambda c: c.set_deadline(0.05)}
    ranks, clean, measured = run_plant(ctl, 160, seed=seed, events=events)
    assert ranks[59] == RICHEST_FEASIBLE and ranks[60] < RICHEST_FEASIBLE  # followed at once
    assert np.all(measured[70:] <= 0.05) and np.all(clean[70:] <= 0.05 * SETPOINT)
    assert ranks[-1] == 3  # 34 ms: the richest point that fits 40 ms
    assert switches(ranks[60:]) <= 1
    # and back up when the deadline is relaxed (through the climb)
    ranks, _, _ = run_plant(ctl, 40, seed=seed, events={0: lambda c: c.set_deadline(DEADLINE)})
    assert ranks[-1] == RICHEST_FEASIBLE and ranks[0] == 3


@pytest.mark.parametrize("seed", SEEDS)
def test_isolated_spikes_step_down_once_and_return(seed):
    ctl = make()
    spikes = (60, 100, 140)
    ranks, _, _ = run_plant(ctl, 180, seed=seed, spikes=spikes)
    assert np.all(ranks[30:61] == RICHEST_FEASIBLE)
    for s in spikes:
        after = ranks[s + 1:s + 40]
        assert after.min() >= RICHEST_FEASIBLE - 1, after  # at most one point down
        assert switches(ranks[s:s + 40]) <= 2, after  # down once, up once
        assert ranks[s + 15] == RICHEST_FEASIBLE, after  # and back
    assert ctl.state.load_changes == 0  # a spike is not a change of load


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("costs", [COSTS, [0.008, 0.014, 0.022, 0.034, 0.078, 0.120]])  # p4 right at the target
def test_no_oscillation_on_a_steady_load(seed, costs):
    ctl = make(costs=costs)
    ranks, _, _ = run_plant(ctl, 230, seed=seed, costs=costs)
    assert switches(ranks[30:]) <= 2, ranks[30:]


@pytest.mark.parametrize("seed", SEEDS)
def test_fixed_overhead_learned_by_the_per_point_corrections(seed):
    # 10 ms of node overhead on top of every point: cheap points look relatively dearer
    ctl = make()
    ranks, clean, _ = run_plant(ctl, 200, seed=seed, overhead=0.010)
    assert np.all(clean[40:] <= TARGET)
    assert ranks[-1] == 4 and switches(ranks[40:]) <= 2  # 66 ms fits 80 ms
    corr = ctl.state.corrections
    assert ctl.predict(NAMES[ranks[-1]]) == pytest.approx(0.066, rel=0.1)
    assert corr["p4"] != 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_reported_overhead_keeps_cheap_points_from_inflating_the_load(seed):
    # 12 ms outside the model on every frame; at 25 ms nothing fits, the controller sits on p0 (20 ms)
    ctl = make(deadline_s=0.025)
    ranks, _, _ = run_plant(ctl, 30, seed=seed, overhead=0.012, report_overhead=True)
    assert ranks[-1] == 0
    st = ctl.state
    assert st.overhead_s == pytest.approx(0.012, rel=0.1) and st.load_factor == pytest.approx(1.0, rel=0.1)
    assert ctl.predict("p4") == pytest.approx(0.012 + 0.056, rel=0.1)  # not 2.5 x 56 ms
    # relaxed: climbs to p4 (68 ms <= 72 ms), where the ratio 20 / 8 = 2.5 of p0 would stop below it
    ranks, clean, _ = run_plant(ctl, 60, seed=seed, overhead=0.012, report_overhead=True,
                                events={0: lambda c: c.set_deadline(DEADLINE)})
    assert ranks[-1] == 4 and np.all(clean <= TARGET), ranks
    assert switches(ranks[30:]) == 0
    # an isolated spike in the overhead is a spike: one step down, the overhead kept, and back
    assert ctl.update(1.5, "p4", 1.45) == "p3"
    assert ctl.state.overhead_s == pytest.approx(0.012, rel=0.15) and ctl.state.outliers >= 1
    ranks, _, _ = run_plant(ctl, 20, seed=seed, overhead=0.012, report_overhead=True)
    assert ranks[0] == 3 and ranks[-1] == 4 and switches(ranks) == 1
    assert ctl.state.load_factor == pytest.approx(1.0, rel=0.1)


def test_late_frame_steps_down_at_least_one_point_even_if_predicted_to_fit():
    ctl = make()
    run_plant(ctl, 20, noise=0.0)
    assert ctl.point == "p4"
    assert ctl.update(0.3, "p4") == "p3"
    assert ctl.state.over_deadline_streak == 1 and ctl.state.outliers == 1


def test_dominated_points_are_left_off_the_ladder():
    pts = [PointCost("a", 0.01, 50.0), PointCost("b", 0.02, 60.0), PointCost("c", 0.03, 55.0),
           PointCost("d", 0.04, 70.0)]
    ctl = OperatingPointController(pts, OperatingPointConfig(deadline_s=1.0))
    assert ctl.ladder == ("a", "b", "d") and ctl.point == "d"
    assert ctl.update(0.03, "c") == "d"  # a dominated point that ran is still learned from
    # unknown mIoU: the list order is the accuracy (later = richer)
    assert ladder_order([PointCost("x", 0.01), PointCost("y", 0.02), PointCost("z", 0.03, 1.0)]) == [0, 1, 2]
    assert ladder_order([PointCost("x", 0.02), PointCost("y", 0.01)]) == [1]  # y: as rich and cheaper
    assert ladder_order([PointCost("x", 0.01, 50.0), PointCost("y", 0.01, 60.0)]) == [1]


def test_bad_measurements_are_ignored():
    ctl = make()
    point = ctl.point
    for lat, name in [(math.nan, point), (-1.0, point), (math.inf, point), ("x", point), (0.01, "nope"),
                      (0.01, None)]:
        assert ctl.update(lat, name) == point
    st = ctl.state
    assert st.ignored == 6 and st.frames == 0 and st.load_factor == 1.0 and st.last_point == ""


def test_reconfigure_validates_and_moves_down_at_once():
    ctl = make()
    assert ctl.reconfigure(setpoint=0.4) == "p3"  # 40 ms target
    assert ctl.config.target_s == pytest.approx(0.04) and ctl.deadline_s == DEADLINE
    with pytest.raises(ValueError, match="unknown OperatingPointConfig"):
        ctl.reconfigure(max_step=0.1)
    with pytest.raises(ValueError, match="setpoint must be <= 1.0"):
        ctl.reconfigure(setpoint=1.5)
    assert ctl.config.setpoint == 0.4  # unchanged after an error
    ctl.reset()
    assert ctl.point == "p3" and ctl.state.frames == 0


@pytest.mark.parametrize("kw, reason", [
    ({"deadline_s": 0.0}, "deadline_s must be > 0.0"),
    ({"hysteresis": 0.5}, "hysteresis must be < 0.5"),
    ({"climb_frames": 0}, "climb_frames must be >= 1"),
    ({"load_smoothing": 0.0}, "load_smoothing must be > 0.0"),
    ({"change_frames": 1.5}, "change_frames must be an integer"),
])
def test_bad_configs_rejected(kw, reason):
    with pytest.raises(ValueError, match=reason):
        OperatingPointConfig(**kw)


def test_bad_points_rejected():
    with pytest.raises(ValueError, match="at least one"):
        OperatingPointController([])
    with pytest.raises(ValueError, match="unique"):
        OperatingPointController([PointCost("a", 0.01), PointCost("a", 0.02)])
    with pytest.raises(ValueError, match="positive number of seconds"):
        OperatingPointController([PointCost("a", 0.0)])
    with pytest.raises(TypeError):
        OperatingPointController([PointCost("a", 0.01)], {"deadline_s": 0.1})  # type: ignore[arg-type]


def test_point_costs_from_calibration_model_card_or_estimate():
    ops = [OperatingPoint("fast", points=4096, centers=128, budget=64, miou=55.0),
           OperatingPoint("mid", points=8192, centers=256, budget=None, miou=60.0, latency_ms=20.0),
           OperatingPoint("full", points=16384, centers=512, miou=65.5)]
    costs, source = point_costs(ops, {"fast": 8.0, "full": float("nan")})
    assert [c.name for c in costs] == ["fast", "mid", "full"]
    assert source == {"fast": "calibrated", "mid": "model card", "full": "estimated"}
    assert costs[0].cost_s == pytest.approx(0.008) and costs[1].cost_s == pytest.approx(0.020)
    # estimate: median s/token of the known points (8 ms / 64, 20 ms / 256) x 512 tokens
    assert costs[2].cost_s == pytest.approx(0.008 / 64 * 512)
    assert [c.miou for c in costs] == [55.0, 60.0, 65.5]
    costs, source = point_costs(ops[:1], None)
    assert source == {"fast": "estimated"} and costs[0].cost_s > 0
    table = calibration_table(ops, *point_costs(ops, {"fast": 8.0}), ladder=("fast", "full"))
    lines = table.splitlines()
    assert lines[0].split() == ["point", "points", "centers", "budget", "mIoU", "cost", "ms", "source", "ladder"]
    assert lines[1].split() == ["fast", "4096", "128", "64", "55.0", "8.00", "calibrated", "yes"]
    assert lines[2].split()[3] == "all" and lines[2].split()[-1] == "no"
    table = calibration_table(ops, *point_costs(ops, {"fast": 8.0}), ladder=("fast",),
                              geometry={"fast": True, "mid": False})
    assert [line.split()[-1] for line in table.splitlines()] == ["geometry", "beside", "inline", "-"]


def test_a_late_frame_without_a_latency_steps_down_and_learns_nothing():
    ctl = make()
    run_plant(ctl, 40, noise=0.0)                          # settled at the richest feasible point
    rank, load = NAMES.index(ctl.point), ctl.state.load_factor
    assert rank == RICHEST_FEASIBLE
    assert ctl.late_frame() == NAMES[rank - 1]             # down at once, as for a measured late frame
    assert ctl.state.over_deadline_streak == 1 and ctl.state.load_factor == load
    ctl.update(COSTS[rank - 1], NAMES[rank - 1])
    assert ctl.state.over_deadline_streak == 0
