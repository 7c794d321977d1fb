"""Closed-loop token-budget controller against a simulated latency plant (deterministic)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from foundry_ros.budget import BudgetController, BudgetControllerConfig, BudgetState

DEADLINE = 0.1
SETPOINT = 0.85
TARGET = DEADLINE * SETPOINT
A = 0.02  # fixed overhead, s
B0 = 5e-6  # s per token -> optimum (TARGET - A) / B0 = 13000 tokens; 6500 once B doubles


def make(**kw) -> BudgetController:
    base = dict(deadline_s=DEADLINE, setpoint=SETPOINT, hysteresis=0.05, max_step=0.25,
                min_budget=256, max_budget=65536, initial_budget=8000, forgetting=0.85)
    base.update(kw)
    return BudgetController(BudgetControllerConfig(**base))


def run_plant(ctl, n, *, a=A, slope=lambda k: B0, noise=0.05, seed=0, spikes=(), content=None,
              start=0, budgets=None, true_lat=None):
    """latency = (a + b(k) * tokens) * (1 + noise * N(0, 1)); spikes multiply latency by 3."""
    rng = np.random.default_rng(seed)
    budgets = [] if budgets is None else budgets
    true_lat = [] if true_lat is None else true_lat
    budget = ctl.budget
    for k in range(start, start + n):
        tokens = budget if content is None else min(budget, content)
        clean = a + slope(k) * tokens
        latency = clean * (1.0 + noise * rng.standard_normal())
        if k in spikes:
            latency *= 3.0
        budgets.append(budget)
        true_lat.append(clean)
        budget = ctl.update(latency, tokens)
        assert isinstance(budget, int)
    return np.array(budgets), np.array(true_lat)


def sign_flips(values) -> int:
    d = np.diff(np.asarray(values, dtype=float))
    s = np.sign(d[d != 0])
    return int((s[1:] != s[:-1]).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("initial", [8000, 20000])
def test_converges_after_start_and_after_load_step(seed, initial):
    ctl = make(initial_budget=initial)
    budgets, lat = run_plant(ctl, 100, slope=lambda k: B0 * (2.0 if k >= 50 else 1.0), seed=seed)
    rel = lat / TARGET
    for window in (slice(10, 50), slice(60, 100)):  # within 10 frames of start / of the step
        assert np.all(np.abs(rel[window] - 1.0) <= 0.15), np.round(rel, 2)
        # no oscillation once converged
        assert sign_flips(budgets[window]) <= 2, budgets[window]
        assert budgets[window].std() / budgets[window].mean() < 0.05
    # the budget itself lands near the plant's optimum
    assert abs(budgets[40:50].mean() / 13000 - 1) < 0.12
    assert abs(budgets[90:100].mean() / 6500 - 1) < 0.12
    # after the load step, deadline misses are short-lived
    assert np.sum(lat[50:] > DEADLINE) <= 4
    st = ctl.state
    assert st.load_changes >= 1 and st.frames == 100
    assert st.slope_s_per_token > 0


def test_tracks_load_decrease():
    ctl = make()
    budgets, lat = run_plant(ctl, 100, slope=lambda k: B0 * (0.5 if k >= 50 else 1.0), seed=5)
    rel = lat / TARGET
    assert np.all(np.abs(rel[65:] - 1.0) <= 0.15)
    assert abs(budgets[90:].mean() / 26000 - 1) < 0.12


def test_isolated_spikes_barely_move_the_budget():
    ctl = make()
    spikes = set(range(20, 100, 7))
    budgets, lat = run_plant(ctl, 100, seed=3, spikes=spikes)
    assert ctl.state.outliers >= len(spikes)
    assert ctl.state.load_changes == 0
    assert np.all(np.abs(lat[10:] / TARGET - 1.0) <= 0.15)
    assert budgets[10:].std() / budgets[10:].mean() < 0.05


def test_bounds_respected():
    ctl = make(max_budget=5000, initial_budget=4000)  # optimum 13000 is out of reach
    budgets, _ = run_plant(ctl, 40, seed=1)
    assert budgets.max() <= 5000 and ctl.budget == 5000
    ctl = make(min_budget=10000, initial_budget=12000)
    budgets, _ = run_plant(ctl, 40, slope=lambda k: 4 * B0, seed=1)  # optimum 3250 < min
    assert budgets.min() >= 10000 and ctl.budget == 10000


def test_step_size_is_bounded():
    ctl = make(initial_budget=1000, max_step=0.2)
    budgets, _ = run_plant(ctl, 30, seed=2)
    steps = np.abs(np.diff(budgets)) / budgets[:-1]
    assert steps.max() <= 0.2 + 1e-3
    ctl = make(initial_budget=1000, max_step=0.5, max_step_abs=300)
    budgets, _ = run_plant(ctl, 30, seed=2)
    assert np.abs(np.diff(budgets)).max() <= 300


def test_hysteresis_holds_budget_inside_band():
    ctl = make(initial_budget=12500, hysteresis=0.1)  # 0.0825 s: 3 % below target
    budgets, _ = run_plant(ctl, 50, noise=0.0)
    assert (budgets == 12500).all()


def test_runtime_deadline_change_moves_budget_the_right_way():
    ctl = make()
    budgets, lat = [], []
    run_plant(ctl, 40, seed=4, budgets=budgets, true_lat=lat)
    converged = ctl.budget
    ctl.set_deadline(0.2)  # more time -> more tokens
    run_plant(ctl, 40, seed=5, start=40, budgets=budgets, true_lat=lat)
    assert ctl.budget > converged * 1.5
    assert abs(lat[-1] / (0.2 * SETPOINT) - 1) <= 0.15
    assert ctl.state.deadline_s == 0.2 and math.isclose(ctl.state.target_s, 0.17)
    relaxed = ctl.budget
    ctl.set_deadline(0.05, setpoint=0.8)  # less time -> fewer tokens
    run_plant(ctl, 40, seed=6, start=80, budgets=budgets, true_lat=lat)
    assert ctl.budget < converged
    assert abs(lat[-1] / 0.04 - 1) <= 0.15
    assert np.all(np.diff(budgets[80:]) <= 0) or sign_flips(budgets[80:]) <= 2
    assert relaxed > converged > ctl.budget


def test_content_limited_frames_do_not_wind_up():
    ctl = make(initial_budget=8000)
    budgets, _ = run_plant(ctl, 60, content=3000, seed=1)  # small clouds: latency far below target
    assert budgets.max() <= 8000  # no run-away towards max_budget
    # when big clouds come back the budget climbs to the optimum without a huge overshoot
    budgets2, lat2 = run_plant(ctl, 30, seed=2)
    assert np.all(lat2 <= DEADLINE)
    assert abs(lat2[-10:].mean() / TARGET - 1) <= 0.15


def test_non_finite_and_negative_latency_ignored():
    ctl = make()
    run_plant(ctl, 20, seed=1)
    before = ctl.state
    for bad_latency, tokens in [(math.nan, 8000), (math.inf, 8000), (-math.inf, 8000), (-0.01, 8000),
                                (0.05, -5), (0.05, math.nan), (None, 8000), ("fast", 8000)]:
        assert ctl.update(bad_latency, tokens) == before.budget
    after = ctl.state
    assert after.ignored == before.ignored + 8
    assert dataclasses.replace(after, ignored=before.ignored) == before  # model untouched


def test_deadline_miss_streak_and_backoff():
    ctl = make(initial_budget=10000, miss_backoff_frames=3, outlier_threshold=math.inf)
    assert ctl.update(0.05, 10000) >= 10000 * 0.75
    budgets = []
    for k in range(4):
        budgets.append(ctl.update(0.15, ctl.budget))
        assert ctl.state.over_deadline_streak == k + 1
    assert budgets[-1] < 10000  # forced down while over the deadline
    ctl.update(0.01, ctl.budget)
    assert ctl.state.over_deadline_streak == 0


def test_state_and_diagnostics():
    ctl = make()
    st = ctl.state
    assert isinstance(st, BudgetState)
    assert st.budget == 8000 and math.isnan(st.intercept_s) and st.frames == 0
    run_plant(ctl, 30, seed=0)
    st = ctl.state
    assert st.budget == ctl.budget
    assert abs(st.predicted_latency_s / TARGET - 1) < 0.1
    d = st.as_dict()
    assert {"intercept_s", "slope_s_per_token", "over_deadline_streak", "budget"} <= set(d)
    ctl.reset()
    assert ctl.state.frames == 0 and ctl.budget == 8000


def test_set_bounds_and_reconfigure():
    ctl = make()
    run_plant(ctl, 30, seed=0)  # converges near 13000
    assert ctl.set_bounds(1000, 9000) == 9000 == ctl.budget
    assert ctl.config.initial_budget == 8000
    assert ctl.set_bounds(20000, 30000) == 20000
    assert ctl.config.initial_budget == 20000  # clamped into the new bounds
    with pytest.raises(ValueError, match="max_budget"):
        ctl.set_bounds(500, 100)
    assert (ctl.config.min_budget, ctl.config.max_budget) == (20000, 30000)  # unchanged on error
    with pytest.raises(ValueError, match="unknown"):
        ctl.reconfigure(deadline=0.2)
    with pytest.raises(ValueError, match="setpoint"):
        ctl.reconfigure(setpoint=1.5)
    assert ctl.config.setpoint == SETPOINT
    ctl.reconfigure(forgetting=0.9, hysteresis=0.02, min_budget=256)
    assert ctl.config.forgetting == 0.9 and ctl.config.min_budget == 256
    with pytest.raises(ValueError, match="deadline_s"):
        ctl.set_deadline(0.0)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"deadline_s": 0.0}, "deadline_s"),
        ({"deadline_s": -1.0}, "deadline_s"),
        ({"deadline_s": math.nan}, "deadline_s"),
        ({"deadline_s": "0.1"}, "deadline_s"),
        ({"setpoint": 0.0}, "setpoint"),
        ({"setpoint": 1.2}, "setpoint"),
        ({"hysteresis": -0.1}, "hysteresis"),
        ({"hysteresis": 0.5}, "hysteresis"),
        ({"max_step": 0.0}, "max_step"),
        ({"max_step": 2.0}, "max_step"),
        ({"forgetting": 0.0}, "forgetting"),
        ({"forgetting": 1.01}, "forgetting"),
        ({"min_budget": 0}, "min_budget"),
        ({"min_budget": 10.5}, "min_budget"),
        ({"min_budget": True}, "min_budget"),
        ({"max_budget": 100, "min_budget": 200, "initial_budget": 150}, "max_budget"),
        ({"initial_budget": 100}, "initial_budget"),
        ({"initial_budget": 10**6}, "initial_budget"),
        ({"max_step_abs": 0}, "max_step_abs"),
        ({"outlier_threshold": 0.5}, "outlier_threshold"),
        ({"change_frames": 0}, "change_frames"),
        ({"miss_backoff_frames": -1}, "miss_backoff_frames"),
        ({"saturation_slack": 1.0}, "saturation_slack"),
    ],
)
def test_bad_configs_rejected(changes, reason):
    kw = dict(deadline_s=DEADLINE, initial_budget=8000)
    kw.update(changes)
    with pytest.raises(ValueError, match=reason):
        BudgetControllerConfig(**kw)


def test_good_config_normalises_types():
    cfg = BudgetControllerConfig(deadline_s=1, min_budget=256.0, initial_budget=4096, max_step_abs=None,
                                 outlier_threshold=math.inf)
    assert isinstance(cfg.deadline_s, float) and isinstance(cfg.min_budget, int)
    assert cfg.target_s == pytest.approx(0.85)
    with pytest.raises(TypeError):
        BudgetController({"deadline_s": 0.1})  # type: ignore[arg-type]


def test_late_frames_without_a_latency_extend_the_streak_and_back_off():
    ctl = make(initial_budget=10000, miss_backoff_frames=3, outlier_threshold=math.inf)
    ctl.update(0.05, 10000)
    model_before = ctl._model.coefficients()
    start = ctl.budget
    for k in range(3):
        ctl.late_frame()                                  # abandoned frames: no latency, still misses
        assert ctl.state.over_deadline_streak == k + 1
    assert ctl.budget < start                             # the streak forced the budget down
    assert ctl._model.coefficients() == model_before      # and the latency model learned nothing
    ctl.update(0.01, ctl.budget)
    assert ctl.state.over_deadline_streak == 0
