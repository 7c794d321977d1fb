"""Scenarios of the demo and of the adaptation benchmark, and the phase logic on a run's trace (pure:
no rclpy, no processes, no clock).

A scenario is the node parameters it starts with and timed events at fractions of the streaming
time; every event starts a new phase:

* ``steady``: the stream as it is, one deadline (the node's default), one phase;
* ``deadline-step``: deadline 100 ms, then 50 ms from one third of the run (set on the running node
  through its parameter service);
* ``cpu-hog``: deadline 100 ms; a bounded busy process pinned to one core (:mod:`foundry_ros.cpu_hog`)
  from one third to two thirds of the run.

A trace is the processed frames in frame order, each with the time its report arrived (seconds
since streaming started), its latency and deadline (a frame is a *hit* when latency <= its own
deadline) and the rank of its operating point (index in the model's list, cheapest first). A frame
belongs to the phase whose start time it arrived at or after; the frames of a phase start at
:func:`first_frame_at` of the event's actual time.

Metrics (frames counted from the first frame of the disturbed phase):

* ``settle_frames``: frames until latency is within the deadline and stays within for
  :data:`SETTLE_HOLD` frames (0: it never left, or came back at once); None when that does not
  happen inside the phase;
* ``hit_rate_after_settle``: hit rate of the phase's frames from the settle frame on (None when it
  never settled);
* ``recover_frames`` (cpu-hog): frames after the hog ends until the node is back at the top
  operating point, the point it held before the hog (median rank of the last :data:`HELD_WINDOW`
  frames before it), or the richest point it reported when no frame came before the hog; None
  when it never got back.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = ["Event", "Scenario", "SCENARIOS", "SCENARIO_CHOICES", "SETTLE_HOLD", "HELD_WINDOW", "scenario_names",
           "first_frame_at", "phase_starts", "phase_of_frames", "hits_of", "hit_rate", "settle_frames",
           "held_point", "recover_frames", "point_ranks", "scenario_metrics", "parse_operating_points",
           "median_or_none"]

#: Frames latency must stay within the deadline for the node to count as settled.
SETTLE_HOLD = 5
#: Frames before the hog whose (median) operating point is "the point it held before".
HELD_WINDOW = 10

DEADLINE = "deadline"
HOG_START = "hog_start"
HOG_STOP = "hog_stop"


@dataclass(frozen=True)
class Event:
    """At fraction ``at`` of the streaming time: ``kind`` (deadline: set deadline_ms to ``value``;
    hog_start / hog_stop)."""

    at: float
    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.at <= 1.0:
            raise ValueError(f"event time must be a fraction of the run in [0, 1], got {self.at}")
        if self.kind not in (DEADLINE, HOG_START, HOG_STOP):
            raise ValueError(f"unknown event kind {self.kind!r}")
        if self.kind == DEADLINE and (self.value is None or not self.value > 0):
            raise ValueError("a deadline event needs a deadline in ms > 0")

    def time_s(self, duration_s: float) -> float:
        return self.at * float(duration_s)


@dataclass(frozen=True)
class Scenario:
    """Node parameters at start, events in time order, one phase name more than events."""

    name: str
    description: str
    phases: tuple[str, ...]
    events: tuple[Event, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.phases) != len(self.events) + 1:
            raise ValueError(f"scenario {self.name}: {len(self.events)} events need {len(self.events) + 1} phases")
        if [e.at for e in self.events] != sorted(e.at for e in self.events):
            raise ValueError(f"scenario {self.name}: events must be in time order")

    @property
    def key(self) -> str:
        """The name as a JSON / Python key (deadline-step -> deadline_step)."""
        return self.name.replace("-", "_")

    def planned_times(self, duration_s: float) -> list[float]:
        """Event times in seconds since streaming started."""
        return [e.time_s(duration_s) for e in self.events]

    @property
    def uses_parameter_service(self) -> bool:
        return any(e.kind == DEADLINE for e in self.events)

    @property
    def uses_hog(self) -> bool:
        return any(e.kind == HOG_START for e in self.events)

    def hog_window_s(self, duration_s: float) -> tuple[float, float] | None:
        """(start, stop) of the hog in seconds since streaming started; None without one."""
        start = [e.time_s(duration_s) for e in self.events if e.kind == HOG_START]
        stop = [e.time_s(duration_s) for e in self.events if e.kind == HOG_STOP]
        if not start:
            return None
        return start[0], (stop[0] if stop else float(duration_s))


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("steady", "the stream as it is, one deadline", ("steady",)),
    Scenario("deadline-step", "deadline 100 ms, then 50 ms from one third of the run",
             ("deadline 100 ms", "deadline 50 ms"), (Event(1 / 3, DEADLINE, 50.0),), {"deadline_ms": 100.0}),
    Scenario("cpu-hog", "a busy process on one core from one third to two thirds of the run",
             ("before", "cpu hog", "after"), (Event(1 / 3, HOG_START), Event(2 / 3, HOG_STOP)),
             {"deadline_ms": 100.0}),
)}
SCENARIO_CHOICES = (*SCENARIOS, "all")


def scenario_names(choice: str) -> list[str]:
    """The scenarios a --scenario choice runs, in order (all: the three in sequence)."""
    if choice == "all":
        return list(SCENARIOS)
    if choice not in SCENARIOS:
        raise ValueError(f"unknown scenario {choice!r}; choose one of {', '.join(SCENARIO_CHOICES)}")
    return [choice]


# ------------------------------------------------------------------------------------------------
# phases

def first_frame_at(times: Sequence[float], t: float) -> int:
    """Index of the first frame that arrived at or after ``t`` (len(times) when none)."""
    return next((i for i, ti in enumerate(times) if ti >= t), len(times))


def phase_starts(times: Sequence[float], event_times: Sequence[float]) -> list[int]:
    """First frame of each phase: 0, then the first frame at each event time."""
    return [0] + [first_frame_at(times, t) for t in event_times]


def phase_of_frames(times: Sequence[float], event_times: Sequence[float]) -> list[int]:
    """Phase index of every frame (frames in order)."""
    starts = phase_starts(times, event_times)
    return [max(k for k, s in enumerate(starts) if s <= i) for i in range(len(times))]


# ------------------------------------------------------------------------------------------------
# metrics on a trace

def hits_of(latency_ms: Sequence[float], deadline_ms: Sequence[float]) -> list[bool]:
    """Per frame: latency within its own deadline."""
    return [float(lat) <= float(dl) for lat, dl in zip(latency_ms, deadline_ms)]


def hit_rate(hits: Sequence[bool]) -> float | None:
    return float(sum(bool(h) for h in hits) / len(hits)) if len(hits) else None


def settle_frames(hits: Sequence[bool], hold: int = SETTLE_HOLD) -> int | None:
    """Frames from the start of ``hits`` until a run of ``hold`` consecutive hits begins (None if none)."""
    if hold < 1:
        raise ValueError("hold must be >= 1")
    run = 0
    for i, h in enumerate(hits):
        run = run + 1 if h else 0
        if run == hold:
            return i - hold + 1
    return None


def held_point(ranks: Sequence[int], window: int = HELD_WINDOW) -> int | None:
    """The operating point held at the end of ``ranks``: the lower median of its last ``window`` ranks."""
    last = sorted(int(r) for r in list(ranks)[-window:])
    return last[(len(last) - 1) // 2] if last else None


def recover_frames(ranks: Sequence[int], top: int) -> int | None:
    """Frames from the start of ``ranks`` until the first frame at ``top`` or richer (None if never)."""
    return next((i for i, r in enumerate(ranks) if int(r) >= int(top)), None)


def point_ranks(names: Sequence[str], order: Sequence[str] = (), fallback: Sequence[float] = ()
                ) -> tuple[list[int], list[str]]:
    """(rank of each frame's operating point, the order used).

    With names (the report's operating_point): the index in ``order`` (cheapest first), names not in
    it appended in the order first seen. Without any name (a node that does not report one): the
    ``fallback`` values per frame (e.g. token_budget; larger = richer) as ranks, order empty.
    """
    if any(names):
        known = list(order)
        for n in names:
            if n and n not in known:
                known.append(n)
        return [known.index(n) if n else -1 for n in names], known
    return [int(round(v)) for v in fallback], []


def scenario_metrics(scenario: Scenario, times: Sequence[float], latency_ms: Sequence[float],
                     deadline_ms: Sequence[float], ranks: Sequence[int], event_times: Sequence[float],
                     order: Sequence[str] = (), hold: int = SETTLE_HOLD) -> dict[str, Any]:
    """The scenario's own summary fields for one trace (frames in order; ``event_times`` the actual
    times of ``scenario.events``)."""
    if len(event_times) != len(scenario.events):
        raise ValueError(f"scenario {scenario.name}: {len(scenario.events)} event times expected, "
                         f"got {len(event_times)}")
    hits = hits_of(latency_ms, deadline_ms)
    starts = phase_starts(times, event_times)
    n = len(times)
    out: dict[str, Any] = {}
    kinds = [e.kind for e in scenario.events]
    if DEADLINE in kinds:
        step = starts[1 + kinds.index(DEADLINE)]
        out.update(_settle(hits, step, n, hold, "step_frame"))
    if HOG_START in kinds:
        start = starts[1 + kinds.index(HOG_START)]
        stop = starts[1 + kinds.index(HOG_STOP)] if HOG_STOP in kinds else n
        out.update(_settle(hits, start, stop, hold, "hog_start_frame"))
        top = held_point(ranks[:start]) if start > 0 else (max(ranks) if len(ranks) else None)
        out["hog_stop_frame"] = stop
        out["top_point"] = (order[top] if order and top is not None and 0 <= top < len(order) else top)
        out["recover_frames"] = recover_frames(ranks[stop:], top) if top is not None and stop < n else None
    return out


def _settle(hits: Sequence[bool], start: int, stop: int, hold: int, start_key: str) -> dict[str, Any]:
    """settle_frames and hit_rate_after_settle of the phase hits[start:stop]."""
    phase = list(hits[start:stop])
    settle = settle_frames(phase, hold)
    return {start_key: start, "settle_frames": settle,
            "hit_rate_after_settle": hit_rate(phase[settle:]) if settle is not None else None}


def median_or_none(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when all are); a non-finite value counts as None."""
    got = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not got:
        return None
    mid = len(got) // 2
    return got[mid] if len(got) % 2 else 0.5 * (got[mid - 1] + got[mid])


# ------------------------------------------------------------------------------------------------
# the node's start-up calibration table

_TABLE_TITLE = "operating points (cheapest first):"
_COLUMNS = {"point": "name", "points": "points", "centers": "centers", "budget": "budget", "miou": "miou",
            "cost ms": "latency_ms"}


def parse_operating_points(log_text: str) -> list[dict[str, Any]]:
    """The last operating point table in a node log (foundry_ros.operating_points.calibration_table
    after the line "operating points (cheapest first):"), as dicts name, points, centers, budget
    (None for "all"), miou (None for "?"), latency_ms (the calibrated cost) in table order; [] if none."""
    lines = log_text.splitlines()
    found: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith(_TABLE_TITLE) or i + 1 >= len(lines):
            continue
        header = [h.strip().lower() for h in re.split(r"\s{2,}", lines[i + 1].strip())]
        if not header or header[0] != "point":
            continue
        rows = []
        for row in lines[i + 2:]:
            cells = re.split(r"\s{2,}", row.strip())
            if not row.strip() or row.startswith("[") or len(cells) < len(header) - 1:
                break
            rows.append(_table_row(dict(zip(header, cells))))
        found = rows
    return found


def _table_row(cells: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, key in _COLUMNS.items():
        raw = cells.get(col)
        if key == "name":
            out[key] = raw or ""
        elif raw is None or raw in ("?", "all", "-", ""):
            out[key] = None
        elif key in ("points", "centers", "budget"):
            out[key] = int(raw)
        else:
            out[key] = float(raw)
    return out
