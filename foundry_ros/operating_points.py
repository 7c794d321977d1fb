"""Closed-loop choice of the model's operating point (pure Python, no rclpy).

A scene model carries an ordered list of operating points, cheapest first (``OperatingPoint`` of
:mod:`foundry_core.configs`: points reaching the network, token centers c, token budget), each with
its held-out accuracy (mIoU) and a cost measured at start (``predictor.calibrate()``). Per frame the
node reports the measured latency and the point that ran; :meth:`OperatingPointController.update`
returns the point of the next frame so that latency stays under ``target = deadline_s * setpoint``.

Ladder.  Points are ordered by calibrated cost; a point that is not more accurate than a cheaper one
(higher mIoU; when an mIoU is unknown, a later place in the model's list = richer) is never worth
running and is left off the ladder (it is still learned from if it runs).

Model.  The latency of point ``i`` is predicted as ``overhead + load * correction[i] * cost[i]``.
``load`` is a robust exponentially weighted mean of the ratio measured / calibrated, shared by all
points, so a load step seen on one point moves the predictions of all; ``correction[i]`` (slower, on
top) holds what is particular to a point (a calibration that was off). ``overhead`` is the part of a
frame's latency that the point does not set (decode, queueing, publish, and the predictor's pre- and
postprocessing, which grow with the input cloud: the node reports all but tokenize + encode + head,
the stages ``predictor.calibrate()`` times) when the caller reports it
(``update(..., overhead_s=...)``): the ratio is then taken on the model's part only, so a fixed
overhead does not inflate the load seen on a cheap point into an over-prediction of a rich one
(unreported, it is 0 and the corrections absorb what they can). Spikes are rejected with
:class:`foundry_ros.budget.ResidualScreen`: a residual beyond ``outlier_threshold`` robust scales is
Huber-clipped, ``change_frames`` consecutive outliers on the same side are a change of load and reset
``load`` (and ``overhead``) to the new measurements at once.

Policy.  The controller aims for the most accurate ladder point whose predicted latency fits the
target:

* **down at once**: a frame over the deadline, or a current point predicted over the target,
  moves at least one point down, or straight to the richest point predicted to fit;
* **up slowly**: only after ``climb_frames`` consecutive frames in which the next richer point is
  predicted at ``<= target * (1 - hysteresis)``, one point at a time (a switch restarts the count);
* :meth:`set_deadline` / :meth:`reconfigure` take effect at once (down to the point predicted to fit
  the new target; up through the climb).

The band between ``target * (1 - hysteresis)`` and ``target`` plus the climb count keep a stationary
load from oscillating: a point that was left for not fitting is only climbed back to once it is
predicted clearly under the target.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from foundry_ros.budget import (CHANGE_KEEP, WARMUP_FRAMES, LatencyController, LatencyTarget, ResidualScreen,
                                check_int, check_real, check_screen_fields)

__all__ = ["OperatingPointConfig", "PointCost", "OperatingPointController", "OperatingPointState",
           "point_costs", "calibration_table", "ladder_order"]

# Bounds of a per-point correction factor (relative to the shared load factor).
_CORRECTION_RANGE = (1.0 / 3.0, 3.0)
# Smallest load factor (a cost can not vanish).
_MIN_LOAD = 1e-3


@dataclasses.dataclass
class OperatingPointConfig(LatencyTarget):
    """Parameters of :class:`OperatingPointController` (``deadline_s``, ``setpoint`` as in
    :class:`~foundry_ros.budget.LatencyTarget`); validated on construction (ValueError)."""

    hysteresis: float = 0.1
    """Climb only when the next richer point is predicted at <= target * (1 - hysteresis), in [0, 0.5)."""
    climb_frames: int = 5
    """Consecutive frames with headroom before climbing one point, >= 1."""
    load_smoothing: float = 0.3
    """Weight of a new measurement in the shared load factor, in (0, 1]."""
    correction_smoothing: float = 0.05
    """Weight of a new measurement in a point's own correction, in [0, 1] (0: no corrections)."""
    outlier_threshold: float = 4.0
    """Residuals beyond this many robust scales are clipped (math.inf disables), > 1."""
    change_frames: int = 2
    """Consecutive same-side outliers that signal a change of load, >= 1."""

    def __post_init__(self) -> None:
        errors: list[str] = []
        self.check_target(errors)
        check_real(self, "load_smoothing", errors, 0.0, 1.0, True, False)
        check_real(self, "correction_smoothing", errors, 0.0, 1.0, False, False)
        check_int(self, "climb_frames", errors, 1)
        check_screen_fields(self, errors)
        if errors:
            raise ValueError("invalid OperatingPointConfig: " + "; ".join(errors))


@dataclasses.dataclass(frozen=True)
class PointCost:
    """One operating point as the controller sees it."""

    name: str
    cost_s: float  # calibrated latency (s), > 0
    miou: float | None = None  # held-out accuracy; None: unknown


@dataclasses.dataclass(frozen=True)
class OperatingPointState:
    """Diagnostics snapshot of an :class:`OperatingPointController`."""

    point: str  # point of the next frame
    predicted_latency_s: float  # predicted latency of `point`
    load_factor: float  # shared measured / calibrated ratio (1.0 before the first frame)
    overhead_s: float  # learned latency outside the model (0 unless reported)
    corrections: dict[str, float]  # per-point factors on top of the load
    ladder: tuple[str, ...]  # points the controller moves along, cheapest first
    target_s: float
    deadline_s: float
    headroom_streak: int  # consecutive frames with headroom for the next richer point
    over_deadline_streak: int  # consecutive measured frames with latency > deadline
    switches: int  # changes of point so far
    frames: int  # accepted measurements
    ignored: int  # rejected measurements (non-finite / negative latency, unknown point)
    outliers: int  # measurements clipped as outliers
    load_changes: int  # detected changes of load
    last_latency_s: float
    last_point: str  # point of the last measured frame ("" before the first)
    floor_predicted_latency_s: float  # predicted latency of the cheapest ladder point
    deadline_feasible: bool  # False: even the cheapest point is predicted over the deadline (after warm-up)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ladder_order(points: Sequence[PointCost]) -> list[int]:
    """Indices of the points worth running, by calibrated cost: each more accurate than every cheaper
    one. Accuracy is the mIoU when every point has one, else the place in the list (later = richer)."""
    known = all(p.miou is not None and math.isfinite(p.miou) for p in points)
    accuracy = [float(p.miou) if known else float(i) for i, p in enumerate(points)]  # type: ignore[arg-type]
    by_cost = sorted(range(len(points)), key=lambda i: (points[i].cost_s, i))
    ladder: list[int] = []
    for i in by_cost:
        if ladder and accuracy[i] <= accuracy[ladder[-1]]:
            continue  # dominated: not more accurate than a cheaper (or as cheap) point
        if ladder and points[i].cost_s == points[ladder[-1]].cost_s:
            ladder[-1] = i  # as cheap and more accurate: replaces it
        else:
            ladder.append(i)
    return ladder


class OperatingPointController(LatencyController):
    """Picks the next frame's operating point from measured latency (see the module docstring).

    Example::

        ctl = OperatingPointController(point_costs(predictor.operating_points, predictor.calibrate()),
                                       OperatingPointConfig(deadline_s=0.1))
        for frame in frames:
            t0 = time.monotonic()
            result = predictor(frame, operating_point=ctl.point)
            ctl.update(time.monotonic() - t0, result.report.operating_point)
    """

    def __init__(self, points: Iterable[PointCost], config: OperatingPointConfig | None = None) -> None:
        self._points = list(points)
        if not self._points:
            raise ValueError("OperatingPointController needs at least one operating point")
        names = [p.name for p in self._points]
        if len(set(names)) != len(names):
            raise ValueError(f"operating point names must be unique, got {names}")
        bad = [p.name for p in self._points if not (isinstance(p.cost_s, (int, float)) and
                                                     math.isfinite(p.cost_s) and p.cost_s > 0.0)]
        if bad:
            raise ValueError(f"operating points {bad}: the calibrated cost must be a positive number of seconds")
        self._config = config if config is not None else OperatingPointConfig()
        if not isinstance(self._config, OperatingPointConfig):
            raise TypeError(f"config must be an OperatingPointConfig, got {type(config).__name__}")
        self._index = {name: i for i, name in enumerate(names)}
        self._ladder = ladder_order(self._points)
        self._screen = ResidualScreen(self._config.outlier_threshold, self._config.change_frames)
        self.reset()

    # ----------------------------------------------------------------------------------------
    # public API

    @property
    def config(self) -> OperatingPointConfig:
        return self._config

    @property
    def point(self) -> str:
        """Operating point of the next frame."""
        return self._points[self._ladder[self._rank]].name

    @property
    def ladder(self) -> tuple[str, ...]:
        """Names of the points the controller moves along, cheapest first."""
        return tuple(self._points[i].name for i in self._ladder)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of all points, in the given order."""
        return tuple(p.name for p in self._points)

    def predict(self, name: str) -> float:
        """Predicted latency (s) of point ``name`` under the current load."""
        return self._predict(self._index[name])

    def reset(self) -> None:
        """Forget what was learned; the point returns to the richest one the calibration says fits."""
        self._screen.reset()
        self._load = 1.0
        self._overhead = 0.0
        self._corr = [1.0] * len(self._points)
        self._started = False
        self._accepted = 0
        self._rank = self._best_fit()
        self._headroom = 0
        self._over_streak = 0
        self._switches = 0
        self._frames = 0
        self._ignored = 0
        self._outliers = 0
        self._load_changes = 0
        self._last_latency = math.nan
        self._last_point = ""

    def update(self, latency_s: float, point_name: str, overhead_s: float | None = None) -> str:
        """Feed one frame's measured latency (s) and the point it ran at; return the next point.

        ``overhead_s``: the part of ``latency_s`` spent outside the model (decode, queueing, publish),
        if the caller measures it (clipped into [0, latency_s]). Non-finite or negative latencies and
        unknown point names are ignored (the point is returned unchanged and counted in ``state.ignored``).
        """
        try:
            latency = float(latency_s)
            overhead = 0.0 if overhead_s is None else float(overhead_s)
        except (TypeError, ValueError):
            latency = overhead = math.nan
        if not math.isfinite(overhead):
            overhead = 0.0
        i = self._index.get(point_name) if isinstance(point_name, str) else None
        if i is None or not (math.isfinite(latency) and latency >= 0.0):
            self._ignored += 1
            return self.point
        late = latency > self._config.deadline_s
        self._frames += 1
        self._last_latency, self._last_point = latency, point_name
        self._over_streak = self._over_streak + 1 if late else 0
        self._learn(i, latency, min(max(overhead, 0.0), latency))
        self._decide(late)
        return self.point

    def late_frame(self) -> str:
        """A frame that missed the deadline without a latency to learn from (the node abandoned it for a
        newer cloud): down at once, as for any late frame; the cost model learns nothing. Returns the
        next point."""
        self._frames += 1
        self._over_streak += 1
        self._decide(late=True)
        return self.point

    def reconfigure(self, **changes: Any) -> str:
        """Replace any config fields at run time (validated; on error nothing changes).

        The model is kept; a lower target moves down at once to the point predicted to fit.
        Returns the point now chosen (``set_deadline`` too: a new deadline is followed at once).
        """
        old = self._replace_config(changes)
        if self._config.target_s != old.target_s or self._config.hysteresis != old.hysteresis:
            self._headroom = 0
            if self._predict(self._ladder[self._rank]) > self._config.target_s:
                self._move(min(self._rank, self._best_fit()))
        return self.point

    @property
    def state(self) -> OperatingPointState:
        cfg = self._config
        return OperatingPointState(
            point=self.point, predicted_latency_s=self._predict(self._ladder[self._rank]),
            load_factor=self._load, overhead_s=self._overhead, corrections={p.name: c for p, c in zip(self._points, self._corr)},
            ladder=self.ladder, target_s=cfg.target_s, deadline_s=cfg.deadline_s,
            headroom_streak=self._headroom, over_deadline_streak=self._over_streak, switches=self._switches,
            frames=self._frames, ignored=self._ignored, outliers=self._outliers, load_changes=self._load_changes,
            last_latency_s=self._last_latency, last_point=self._last_point,
            floor_predicted_latency_s=self._predict(self._ladder[0]), deadline_feasible=self.deadline_feasible)

    @property
    def deadline_feasible(self) -> bool:
        """False when, after the warm-up frames, even the cheapest ladder point is predicted over the
        deadline: no operating point can hold it under the load measured (raise the deadline, lower the
        load, or use a cheaper model or a smaller input); True before any measurement."""
        return self._accepted < WARMUP_FRAMES or self._predict(self._ladder[0]) <= self._config.deadline_s

    # ----------------------------------------------------------------------------------------
    # internals

    def _base(self, i: int) -> float:
        return self._corr[i] * self._points[i].cost_s

    def _predict(self, i: int) -> float:
        return self._overhead + self._load * self._base(i)

    def _best_fit(self) -> int:
        """Highest ladder rank predicted to fit the target (0 when none does)."""
        target = self._config.target_s
        fits = [r for r, i in enumerate(self._ladder) if self._predict(i) <= target]
        return fits[-1] if fits else 0

    def _learn(self, i: int, latency: float, overhead: float) -> None:
        cfg = self._config
        base = self._base(i)
        if not self._started:
            self._load = max((latency - overhead) / base, _MIN_LOAD)
            self._overhead = overhead
            self._screen.start(latency)
            self._started = True
            self._accepted = 1
            return
        verdict = self._screen.screen(latency, self._overhead + self._load * base,
                                      payload=((latency - overhead) / base, overhead),
                                      check=self._accepted >= WARMUP_FRAMES)
        self._accepted += 1
        self._outliers += int(verdict.outlier)
        if verdict.change is not None:  # a change of load: start over from the new measurements
            n = len(verdict.change)
            ratio, self._overhead = (sum(r for r, _ in verdict.change) / n, sum(o for _, o in verdict.change) / n)
            self._load = max(CHANGE_KEEP * self._load + (1.0 - CHANGE_KEEP) * ratio, _MIN_LOAD)
            self._load_changes += 1
            return
        a = cfg.load_smoothing
        # the model's part of the frame: measured, or for an outlier the clipped latency less the learned
        # overhead (a spike in the overhead then counts like any spike, it does not cut the load)
        model_part = max(verdict.value - (self._overhead if verdict.outlier else overhead), _MIN_LOAD * base)
        self._load = max((1.0 - a) * self._load + a * model_part / base, _MIN_LOAD)
        if not verdict.outlier:
            self._overhead = (1.0 - a) * self._overhead + a * overhead
        if not verdict.outlier and cfg.correction_smoothing > 0.0:
            residual = model_part / (self._load * base)  # what the shared load did not explain
            lo, hi = _CORRECTION_RANGE
            self._corr[i] = min(max(self._corr[i] * residual ** cfg.correction_smoothing, lo), hi)

    def _decide(self, late: bool) -> None:
        cfg = self._config
        rank = self._rank
        if late or self._predict(self._ladder[rank]) > cfg.target_s:
            self._move(max(0, min(rank - 1, self._best_fit())))
            return
        richer = rank + 1
        if richer < len(self._ladder) and self._predict(self._ladder[richer]) <= cfg.target_s * (1.0 - cfg.hysteresis):
            self._headroom += 1
        else:
            self._headroom = 0
        if self._headroom >= cfg.climb_frames:
            self._move(richer)

    def _move(self, rank: int) -> None:
        if rank != self._rank:
            self._rank = rank
            self._switches += 1
            self._headroom = 0


def _field(op: Any, name: str) -> Any:
    return op.get(name) if isinstance(op, Mapping) else getattr(op, name, None)


def point_costs(operating_points: Sequence[Any], calibrated_ms: Mapping[str, float] | None
                ) -> tuple[list[PointCost], dict[str, str]]:
    """(the controller's points, name -> where each cost came from) of a model's operating points.

    A point's cost is its calibrated median latency; failing that the model card's ``latency_ms``;
    failing both, the median seconds-per-token of the known points times its token count (budget,
    else centers); with nothing known at all, 1 ms per 1000 tokens (the load factor learns the scale
    from the first frame).
    """
    calibrated_ms = dict(calibrated_ms or {})

    def good(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0.0

    def tokens(op: Any) -> int:
        return int(_field(op, "budget") or _field(op, "centers") or 1)

    costs: dict[str, float] = {}
    source: dict[str, str] = {}
    for op in operating_points:
        name = str(_field(op, "name"))
        if good(calibrated_ms.get(name)):
            costs[name], source[name] = float(calibrated_ms[name]) / 1e3, "calibrated"
        elif good(_field(op, "latency_ms")):
            costs[name], source[name] = float(_field(op, "latency_ms")) / 1e3, "model card"
    per_token = sorted(costs[str(_field(op, "name"))] / tokens(op) for op in operating_points
                       if str(_field(op, "name")) in costs)
    s_per_token = per_token[len(per_token) // 2] if per_token else 1e-6
    out = []
    for op in operating_points:
        name = str(_field(op, "name"))
        if name not in costs:
            costs[name], source[name] = s_per_token * tokens(op), "estimated"
        miou = _field(op, "miou")
        known = isinstance(miou, (int, float)) and not isinstance(miou, bool) and math.isfinite(miou)
        out.append(PointCost(name, costs[name], float(miou) if known else None))
    return out, source


def calibration_table(operating_points: Sequence[Any], costs: Sequence[PointCost], source: Mapping[str, str],
                      ladder: Sequence[str] = (), geometry: Mapping[str, bool] | None = None) -> str:
    """The operating points as a text table (for the node's start-up log). geometry: per point, whether
    the predictor runs its frame geometry beside the network (predictor.overlap_by_point, set by
    calibrate()); the column is left out without it."""
    head = ("point", "points", "centers", "budget", "mIoU", "cost ms", "source", "ladder")
    rows = [head + (("geometry",) if geometry else ())]
    by_name = {c.name: c for c in costs}
    for op in operating_points:
        name = str(_field(op, "name"))
        c = by_name[name]
        budget = _field(op, "budget")
        row = (name, str(_field(op, "points")), str(_field(op, "centers")),
               "all" if budget is None else str(budget), "?" if c.miou is None else f"{c.miou:.1f}",
               f"{c.cost_s * 1e3:.2f}", source.get(name, "?"), "yes" if name in ladder else "no")
        if geometry:
            row += ({True: "beside", False: "inline"}.get(geometry.get(name), "-"),)
        rows.append(row)
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
