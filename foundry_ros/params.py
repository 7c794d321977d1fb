"""Parameters of the Foundry node as pure Python (no rclpy): specs, validation, derived values.

:mod:`foundry_ros.node` declares one ROS 2 parameter per :data:`PARAM_SPECS` entry (with a
``ParameterDescriptor`` built from the spec) and calls :func:`validate_params` from its
on-set-parameters callback, so the rules below are the node's rules and can be tested without
spinning anything (``test/test_node_params.py``).

Parameter groups:

* **read-only** (need a restart / model reload): ``model_path``, ``device``, ``precision``,
  ``input_topics``, ``qos_reliability``, ``qos_depth``, ``extra_fields`` (the model's input
  channels are fixed by its checkpoint).
* **run time** (applied immediately): the controller (``deadline_ms``, ``setpoint``,
  ``hysteresis``, ``controller_enabled``; the token budget's ``max_step``, ``min_budget``,
  ``max_budget``, ``initial_budget``; the operating points' ``operating_point``, ``climb_frames``),
  ``fusion_threshold``, ``max_age_s``, ``publish_embeddings``, ``frame_id_override``,
  ``diagnostics_period_s``, ``diagnostics_error_frames``.

Two controllers. A model with operating points (``predictor.operating_points``) is steered by
:class:`~foundry_ros.operating_points.OperatingPointController` (one point per frame;
``operating_point`` ``auto``, or a fixed point name checked against the model's list); a model
without them by :class:`~foundry_ros.budget.BudgetController` (the encoder token budget). Functions
taking ``operating_points`` (the model's point names) use the first when it is non-empty.

Note: a non-atomic ``set_parameters`` call validates each parameter on its own, so widening
both budget bounds past each other (e.g. min 100..200 -> 300..400) must use
``set_parameters_atomically``.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Iterable, Mapping, Sequence

from foundry_ros.budget import BudgetController, BudgetControllerConfig
from foundry_ros.operating_points import OperatingPointConfig, OperatingPointController

__all__ = [
    "ParamSpec", "PARAM_SPECS", "SPECS_BY_NAME", "READ_ONLY", "DEFAULT_DEADLINE_S",
    "RELIABILITY_CHOICES", "PRECISION_CHOICES", "default_params", "validate_params", "validate_change",
    "coerce_value", "normalise", "controller_config", "controller_changes", "plan_change", "frame_budget",
    "effective_bounds", "fusion_threshold_arg", "PeriodEstimator", "diagnostic_level",
    "OK", "WARN", "ERROR", "AUTO", "check_operating_point", "op_controller_config", "FrameControl",
    "frame_control", "follow_sensor_period", "observe_frame", "ROS_STANDARD_PARAMS", "unknown_parameter_messages",
]

RELIABILITY_CHOICES = ("best_effort", "reliable")
PRECISION_CHOICES = ("auto", "fp32", "fp16")  # PredictorConfig.precision (+ "auto": not passed)
BACKEND_CHOICES = ("auto", "tensorrt", "torch", "onnxruntime")
#: Deadline used while ``deadline_ms == 0`` and the sensor period has not been measured yet.
DEFAULT_DEADLINE_S = 0.1
#: Diagnostic levels (same bytes as diagnostic_msgs/DiagnosticStatus OK/WARN/ERROR).
OK, WARN, ERROR = 0, 1, 2
#: ``operating_point`` value that lets the controller choose the point of every frame.
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, default, kind, documentation, range and mutability."""

    name: str
    default: Any
    kind: str  # "bool" | "int" | "float" | "str" | "str[]"
    description: str
    lo: float | None = None  # inclusive range (rendered as Integer/FloatingPointRange)
    hi: float | None = None
    read_only: bool = False
    choices: tuple[str, ...] | None = None
    constraints: str = ""  # ParameterDescriptor.additional_constraints


_CTL = BudgetControllerConfig()
_OPC = OperatingPointConfig()

PARAM_SPECS: tuple[ParamSpec, ...] = (
    # --- model (read-only: a change needs a model reload) ------------------------------------
    ParamSpec("model_path", "", "str", "Exported Foundry model file passed to Predictor.from_checkpoint.",
              read_only=True, constraints="empty = the shipped default scene model"),
    ParamSpec("device", "auto", "str",
              "Torch device of the predictor: 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.",
              read_only=True, constraints="auto, cpu, cuda or cuda:N"),
    ParamSpec("precision", "auto", "str",
              "Encoder precision: fp16 (CUDA autocast; fp32 on CPU) or fp32; 'auto' = the predictor's default.",
              read_only=True, choices=PRECISION_CHOICES, constraints="one of " + ", ".join(PRECISION_CHOICES)),
    ParamSpec("backend", "auto", "str",
              "Inference backend: auto (TensorRT -> CUDA -> CPU ladder), tensorrt, torch or onnxruntime; "
              "an unavailable one falls down the ladder with the reason logged.",
              read_only=True, choices=BACKEND_CHOICES, constraints="one of " + ", ".join(BACKEND_CHOICES)),
    # --- input ----------------------------------------------------------------------------------
    ParamSpec("input_topics", ["/points"], "str[]",
              "sensor_msgs/PointCloud2 topics to segment; all feed one newest-frame slot.",
              read_only=True, constraints="at least one topic"),
    ParamSpec("qos_reliability", "best_effort", "str",
              "Reliability of the input subscriptions. best_effort (sensor data QoS) matches both "
              "best-effort and reliable publishers; reliable matches only reliable publishers but is "
              "not subject to fragment loss of large clouds on UDP transports.",
              read_only=True, choices=RELIABILITY_CHOICES, constraints="best_effort or reliable"),
    ParamSpec("qos_depth", 2, "int", "History depth (KEEP_LAST) of the input subscriptions (2: a cloud that arrives while "
              "the executor is busy waits instead of overwriting the previous one in DDS; the node still works "
              "on the newest and counts the older as stale).",
              lo=1, hi=100, read_only=True),
    ParamSpec("extra_fields", [], "str[]",
              "PointCloud2 fields appended to x,y,z as model input channels (e.g. ['intensity']); "
              "must match the model's input.", read_only=True),
    ParamSpec("max_age_s", 0.5, "float",
              "Frames older than this (node clock minus header stamp; receive time if the stamp is 0) "
              "are dropped before inference. 0 disables the check.", lo=0.0, hi=3600.0),
    ParamSpec("abandon_late_frames", True, "bool",
              "Abandon a frame between stages once it is past the deadline and a newer cloud is waiting: the "
              "newer one starts at once instead of queueing behind a late result (after a machine stall the "
              "next frame then still meets its deadline). Abandoned frames count as stale (superseded) and in "
              "diagnostics frames_abandoned_late. false: every frame taken is finished, however late."),
    ParamSpec("frame_id_override", "", "str",
              "If non-empty, replaces header.frame_id of the outputs (default: the input's frame)."),
    # --- latency controller (shared) and token budget (models without operating points) ------------
    ParamSpec("deadline_ms", 0.0, "float",
              "Latency deadline receive->publish in ms; 0 derives it from the measured sensor period.",
              lo=0.0, hi=60000.0),
    ParamSpec("setpoint", _CTL.setpoint, "float", "Target latency as a fraction of the deadline.",
              lo=0.01, hi=1.0),
    ParamSpec("hysteresis", _CTL.hysteresis, "float",
              "No-change band around the target latency, as a fraction of it.", lo=0.0, hi=0.49),
    ParamSpec("max_step", _CTL.max_step, "float",
              "Largest budget change per frame as a fraction of the current budget.", lo=0.01, hi=1.0),
    ParamSpec("min_budget", 16, "int", "Smallest token budget (also clamped to the model's minimum).",
              lo=1, hi=1 << 20),
    ParamSpec("max_budget", 8192, "int", "Largest token budget (also clamped to the model's maximum).",
              lo=1, hi=1 << 20),
    ParamSpec("initial_budget", 1024, "int",
              "Budget of the first frame, and the fixed budget when controller_enabled is false.",
              lo=1, hi=1 << 20),
    ParamSpec("controller_enabled", True, "bool",
              "Closed-loop budget control; false runs every frame at initial_budget."),
    # --- operating points (models that carry them) -------------------------------------------
    ParamSpec("operating_point", AUTO, "str",
              "Operating point of every frame for a model with operating points: 'auto' = chosen per frame "
              "by the controller (the most accurate point predicted to fit the target), or a fixed point name.",
              constraints="auto or one of the model's operating point names"),
    ParamSpec("climb_frames", _OPC.climb_frames, "int",
              "Consecutive frames with headroom (next richer point predicted <= target * (1 - hysteresis)) "
              "before the controller climbs one operating point.", lo=1, hi=1000),
    ParamSpec("fusion_threshold", -1.0, "float",
              "SuperToken fusion threshold r in [0, 1] (merge tokens with gate probability > r) applied "
              "on top of the budget; -1 (any negative value) = budget-driven only.", lo=-1.0, hi=1.0),
    # --- outputs ---------------------------------------------------------------------------------
    ParamSpec("publish_embeddings", False, "bool",
              "Publish foundry_msgs/TokenEmbeddings on /foundry/embeddings (only while subscribed)."),
    ParamSpec("diagnostics_period_s", 1.0, "float", "Period of /diagnostics messages.", lo=0.05, hi=60.0),
    ParamSpec("diagnostics_error_frames", 5, "int",
              "Consecutive frames over the deadline that turn the diagnostic status to ERROR.", lo=1, hi=10000),
)

SPECS_BY_NAME: dict[str, ParamSpec] = {s.name: s for s in PARAM_SPECS}
READ_ONLY = frozenset(s.name for s in PARAM_SPECS if s.read_only)
#: Parameters every ROS 2 node may be given (rclpy's own, launch's): never reported as unknown; nor are
#: the ``qos_overrides.<topic>...`` ones of :data:`ROS_STANDARD_PREFIXES`.
ROS_STANDARD_PARAMS = frozenset({"use_sim_time", "start_type_description_service", "start_parameter_services",
                                 "start_parameter_event_publisher"})
ROS_STANDARD_PREFIXES = ("qos_overrides.",)


def unknown_parameter_messages(given: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """A warning for every name in ``given`` (parameters handed to the node) that is neither a spec,
    nor in ``known`` (e.g. declared by rclpy), nor a standard ROS parameter; each names the closest
    spec when there is one (``unknown parameter 'deadine_ms' (did you mean 'deadline_ms'?)``)."""
    import difflib

    skip = set(SPECS_BY_NAME) | ROS_STANDARD_PARAMS | set(known)
    out = []
    for name in given:
        if name in skip or name.startswith(ROS_STANDARD_PREFIXES):
            continue
        close = difflib.get_close_matches(name, list(SPECS_BY_NAME), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "not a parameter of this node"
        out.append(f"unknown parameter {name!r} ({hint}); ignored")
    return out


def default_params() -> dict[str, Any]:
    """name -> default value (lists copied)."""
    return {s.name: (list(s.default) if isinstance(s.default, list) else s.default) for s in PARAM_SPECS}


def coerce_value(spec: ParamSpec, value: Any) -> Any:
    """Normalise a value for ``spec`` (int -> float for floats, None -> [] for arrays) or raise ValueError."""
    kind = spec.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):
                return value
            raise ValueError(f"{spec.name} must be finite, got {value!r}")
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "str[]":
        if value is None:  # NOT_SET (e.g. `[]` in a params file)
            return []
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ValueError(f"{spec.name} must be of type {kind}, got {value!r}")


def _check_one(spec: ParamSpec, value: Any) -> str | None:
    try:
        value = coerce_value(spec, value)
    except ValueError as e:
        return str(e)
    if spec.lo is not None and value < spec.lo:
        return f"{spec.name} must be >= {spec.lo}, got {value}"
    if spec.hi is not None and value > spec.hi:
        return f"{spec.name} must be <= {spec.hi}, got {value}"
    if spec.choices is not None and value not in spec.choices:
        return f"{spec.name} must be one of {list(spec.choices)}, got {value!r}"
    return None


def check_operating_point(value: str, operating_points: Sequence[str] | None) -> str | None:
    """The problem of ``operating_point`` = ``value`` for a model with these point names (None: fine;
    ``operating_points`` None: the model is not known yet, only the form is checked)."""
    if not value.strip():
        return f"operating_point must be '{AUTO}' or an operating point name, got {value!r}"
    if operating_points is None or value == AUTO or value in operating_points:
        return None
    if not operating_points:
        return f"operating_point must be '{AUTO}': the model has no operating points, got {value!r}"
    return f"operating_point must be '{AUTO}' or one of {list(operating_points)}, got {value!r}"


def validate_params(params: Mapping[str, Any], operating_points: Sequence[str] | None = None) -> list[str]:
    """All problems of a complete parameter set (empty list: valid). Unknown names are ignored.

    ``operating_points``: the model's point names, to check ``operating_point`` against (None: not known)."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    for name, value in params.items():
        spec = SPECS_BY_NAME.get(name)
        if spec is None:
            continue
        err = _check_one(spec, value)
        if err:
            errors.append(err)
        else:
            values[name] = coerce_value(spec, value)
    if errors:
        return errors
    topics = values.get("input_topics")
    if topics is not None:
        if not topics or any(not t.strip() for t in topics):
            errors.append(f"input_topics must hold at least one non-empty topic name, got {topics!r}")
        elif len(set(topics)) != len(topics):
            errors.append(f"input_topics has duplicates: {topics!r}")
    extra = values.get("extra_fields")
    if extra:
        bad = [f for f in extra if f in ("x", "y", "z") or not f.strip()]
        if bad or len(set(extra)) != len(extra):
            errors.append(f"extra_fields must be distinct non-empty names other than x, y, z, got {extra!r}")
    lo, hi, init = values.get("min_budget"), values.get("max_budget"), values.get("initial_budget")
    if lo is not None and hi is not None and lo > hi:
        errors.append(f"min_budget ({lo}) must be <= max_budget ({hi})")
    elif init is not None and lo is not None and hi is not None and not lo <= init <= hi:
        errors.append(f"initial_budget ({init}) must lie in [min_budget, max_budget] = [{lo}, {hi}]")
    device = values.get("device")
    if device is not None and not (device in ("auto", "cpu", "cuda") or
                                   (device.startswith("cuda:") and device[5:].isdigit())):
        errors.append(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    fusion = values.get("fusion_threshold")
    if fusion is not None and fusion > 1.0:
        errors.append(f"fusion_threshold must be -1 (budget-driven) or in [0, 1], got {fusion}")
    point = values.get("operating_point")
    if point is not None:
        err = check_operating_point(point, operating_points)
        if err:
            errors.append(err)
    return errors


def validate_change(current: Mapping[str, Any], changes: Mapping[str, Any],
                    allow_read_only: bool = False, operating_points: Sequence[str] | None = None) -> list[str]:
    """Problems of applying ``changes`` on top of ``current`` at run time (empty list: accepted)."""
    errors = []
    if not allow_read_only:
        for name in changes:
            if name in READ_ONLY and name in current and changes[name] != current[name]:
                errors.append(f"{name} is read-only (restart the node to change it)")
    merged = dict(current)
    merged.update(changes)
    return errors + validate_params(merged, operating_points)


def effective_bounds(min_budget: int, max_budget: int, model_min: int | None = None,
                     model_max: int | None = None) -> tuple[int, int]:
    """The parameter bounds intersected with the model's; the model's bounds win if they are disjoint."""
    lo, hi = int(min_budget), int(max_budget)
    mlo = int(model_min) if model_min is not None else None
    mhi = int(model_max) if model_max is not None else None
    if mlo is not None:
        lo = max(lo, mlo)
    if mhi is not None:
        hi = min(hi, mhi)
    if lo > hi:  # parameters outside the model's range: use the model's
        lo = mlo if mlo is not None else hi
        hi = mhi if mhi is not None else lo
        lo, hi = min(lo, hi), max(lo, hi)
    return max(lo, 1), max(hi, 1)


def controller_config(params: Mapping[str, Any], deadline_s: float, model_min: int | None = None,
                      model_max: int | None = None) -> BudgetControllerConfig:
    """BudgetControllerConfig for a parameter set (deadline already resolved; bounds intersected)."""
    lo, hi = effective_bounds(params["min_budget"], params["max_budget"], model_min, model_max)
    init = min(max(int(params["initial_budget"]), lo), hi)
    return BudgetControllerConfig(
        deadline_s=float(deadline_s), setpoint=float(params["setpoint"]),
        hysteresis=float(params["hysteresis"]), max_step=float(params["max_step"]),
        min_budget=lo, max_budget=hi, initial_budget=init)


def op_controller_config(params: Mapping[str, Any], deadline_s: float) -> OperatingPointConfig:
    """OperatingPointConfig for a parameter set (deadline already resolved)."""
    return OperatingPointConfig(deadline_s=float(deadline_s), setpoint=float(params["setpoint"]),
                                hysteresis=float(params["hysteresis"]), climb_frames=int(params["climb_frames"]))


def controller_changes(params_after: Mapping[str, Any], changed: Iterable[str],
                       model_min: int | None = None, model_max: int | None = None,
                       operating_points: Sequence[str] | None = None) -> dict[str, Any]:
    """``reconfigure`` keyword arguments of the node's controller for changed node parameters: the
    OperatingPointController's when ``operating_points`` is non-empty, else the BudgetController's.

    ``params_after`` is the complete parameter set after the change; ``deadline_ms`` is not handled
    here (it needs the measured period, see :meth:`PeriodEstimator.deadline_s`).
    """
    changed = set(changed)
    out: dict[str, Any] = {}
    if operating_points:
        for name in ("setpoint", "hysteresis"):
            if name in changed:
                out[name] = float(params_after[name])
        if "climb_frames" in changed:
            out["climb_frames"] = int(params_after["climb_frames"])
        return out
    for name in ("setpoint", "hysteresis", "max_step"):
        if name in changed:
            out[name] = float(params_after[name])
    if changed & {"min_budget", "max_budget", "initial_budget"}:
        lo, hi = effective_bounds(params_after["min_budget"], params_after["max_budget"], model_min, model_max)
        out["min_budget"], out["max_budget"] = lo, hi
        out["initial_budget"] = min(max(int(params_after["initial_budget"]), lo), hi)
    return out


def plan_change(current: Mapping[str, Any], changes: Mapping[str, Any], period: PeriodEstimator,
                model_min: int | None = None, model_max: int | None = None,
                operating_points: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameter set after ``changes``, the controller's ``reconfigure`` keyword arguments, see
    :func:`controller_changes`) of a run-time change; ValueError with the reasons when it is rejected."""
    errors = validate_change(current, changes, operating_points=operating_points)
    if errors:
        raise ValueError("; ".join(errors))
    new_p = dict(current)
    new_p.update(normalise(changes))
    ctl = controller_changes(new_p, changes, model_min, model_max, operating_points)
    if "deadline_ms" in changes:
        ctl["deadline_s"] = period.deadline_s(new_p["deadline_ms"])
    return new_p, ctl


def follow_sensor_period(controller: BudgetController | OperatingPointController, params: Mapping[str, Any],
                         measured_deadline_s: float) -> float:
    """The controller's deadline (s) for the next frame: with ``deadline_ms == 0`` it follows
    ``measured_deadline_s`` (the sensor period) once that moved by more than 2 %."""
    deadline = controller.deadline_s
    if params["deadline_ms"] <= 0.0 and abs(measured_deadline_s - deadline) > 0.02 * deadline:
        controller.set_deadline(measured_deadline_s)
    return controller.deadline_s


def frame_budget(controller: BudgetController, params: Mapping[str, Any], measured_deadline_s: float
                 ) -> tuple[int, float]:
    """(token budget, deadline s) of the next frame.

    The deadline follows the sensor period (:func:`follow_sensor_period`); with ``controller_enabled``
    false every frame runs at ``initial_budget`` (clamped into the bounds).
    """
    deadline = follow_sensor_period(controller, params, measured_deadline_s)
    if params["controller_enabled"]:
        return controller.budget, deadline
    cfg = controller.config
    return min(max(cfg.initial_budget, cfg.min_budget), cfg.max_budget), deadline


@dataclasses.dataclass(frozen=True)
class FrameControl:
    """How the next frame runs: at a token budget (BudgetController) or at an operating point."""

    budget: int | None  # token budget (None: an operating point decides it)
    operating_point: str  # operating point name ("" with a token budget)
    deadline_s: float


def frame_control(controller: BudgetController | OperatingPointController, params: Mapping[str, Any],
                  measured_deadline_s: float) -> FrameControl:
    """:class:`FrameControl` of the next frame. With operating points: the parameter's fixed point, or
    (``operating_point`` auto) the controller's, which stays where it is while ``controller_enabled``
    is false (no learning)."""
    if isinstance(controller, OperatingPointController):
        deadline = follow_sensor_period(controller, params, measured_deadline_s)
        fixed = params["operating_point"]
        return FrameControl(None, controller.point if fixed == AUTO else fixed, deadline)
    budget, deadline = frame_budget(controller, params, measured_deadline_s)
    return FrameControl(budget, "", deadline)


def observe_frame(controller: BudgetController | OperatingPointController, latency_s: float, tokens: int,
                  operating_point: str, overhead_s: float | None = None) -> None:
    """Feed one measured frame to the controller (its token count, or the point it ran at and the part
    of its latency spent outside the model)."""
    if isinstance(controller, OperatingPointController):
        controller.update(latency_s, operating_point, overhead_s)
    else:
        controller.update(latency_s, tokens)


def fusion_threshold_arg(value: float) -> float | None:
    """The predictor's ``fusion_threshold`` argument: None (budget-driven) for negative values."""
    value = float(value)
    return None if value < 0.0 or not math.isfinite(value) else value


class PeriodEstimator:
    """Sensor period from message inter-arrival times (median of the last ``window`` gaps).

    The median ignores the occasional burst or gap (one lost message doubles one interval only).
    Gaps longer than ``max_gap_s`` (sensor paused) are not counted.
    """

    def __init__(self, window: int = 31, max_gap_s: float = 5.0) -> None:
        self._gaps: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self.max_gap_s = max_gap_s

    def tick(self, t: float) -> None:
        if self._last is not None:
            gap = t - self._last
            if 0.0 < gap <= self.max_gap_s:
                self._gaps.append(gap)
        self._last = t

    @property
    def period_s(self) -> float | None:
        """Median period, or None until three intervals were measured."""
        if len(self._gaps) < 3:
            return None
        gaps = sorted(self._gaps)
        return gaps[len(gaps) // 2]

    def deadline_s(self, deadline_ms: float, fallback_s: float = DEFAULT_DEADLINE_S) -> float:
        """Deadline for ``deadline_ms``: the parameter if > 0, else the measured period (or fallback)."""
        if deadline_ms > 0.0:
            return float(deadline_ms) / 1000.0
        period = self.period_s
        return period if period is not None else fallback_s


def diagnostic_level(*, frames: int, last_over_deadline: bool, over_streak: int, error_frames: int,
                     predictor_failed: bool, decode_errors_recent: int = 0, incompatible_qos: int = 0,
                     incompatible_qos_recent: int = 0, incompatible_reason: str = "", infeasible: str = ""
                     ) -> tuple[int, str]:
    """(level, message) of the node's diagnostic status.

    ERROR: the last predictor call failed, or ``over_streak >= error_frames`` consecutive deadline
    misses. WARN: a publisher offered incompatible QoS (since the last status, or at all while no
    frame was processed yet: the node is then deaf to it), the last frame missed the deadline, or
    malformed clouds arrived since the last status. OK otherwise (also before the first frame, with a
    "waiting" message). ``infeasible`` (why no operating point can hold the deadline, "" if one can) is
    appended to the over-deadline messages.
    """
    why = f": {infeasible}" if infeasible else ""
    if predictor_failed:
        return ERROR, "predictor failed on the last frame"
    if over_streak >= error_frames:
        return ERROR, f"over deadline for {over_streak} consecutive frames{why}"
    if incompatible_qos_recent or (incompatible_qos and frames == 0):
        return WARN, (f"incompatible QoS: {incompatible_reason or 'a publisher does not match the input QoS'} "
                      f"({incompatible_qos} event(s))")
    if last_over_deadline:
        return WARN, f"last frame over deadline{why}"
    if decode_errors_recent:
        return WARN, f"{decode_errors_recent} malformed cloud(s) since the last status"
    if frames == 0:
        return OK, "waiting for input"
    return OK, "running"


def normalise(params: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Coerced copy of ``params`` (only known names)."""
    out = {}
    for name, value in params.items():
        if names is not None and name not in names:
            continue
        spec = SPECS_BY_NAME.get(name)
        out[name] = coerce_value(spec, value) if spec is not None else value
    return out
