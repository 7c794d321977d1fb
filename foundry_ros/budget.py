"""Closed-loop token-budget controller (pure Python, no rclpy).

The node reports, per frame, the measured latency and the number of tokens that entered the
encoder; :meth:`BudgetController.update` returns the token budget for the next frame so that
latency tracks ``target = deadline_s * setpoint``.

Model.  Latency is modelled locally as ``latency ~= a + b * tokens`` by exponentially weighted
least squares (equivalent to recursive least squares with forgetting factor ``forgetting``).
When the recent budgets hardly vary, the slope is not identifiable from the data, so it is
regularised towards the proportional slope ``mean(latency) / mean(tokens)``; with a
non-negative intercept that slope over-estimates ``b``, which makes the controller cautious
(monotone convergence, no overshoot) rather than aggressive.

Robustness.  Each measurement is compared with the model's prediction; a residual beyond
``outlier_threshold`` robust scales (an exponentially weighted mean absolute residual) is
Huber-clipped before it enters the model, so a single spike (GC pause, scheduling hiccup)
barely moves the budget.  ``change_frames`` consecutive outliers on the same side are taken
as a change of load: old data are largely forgotten and the raw outlying measurements are
fed to the model, so a real step in load is tracked within a couple of frames.

Control.  The model predicts the latency at the current budget; inside the hysteresis band
``|pred - target| <= hysteresis * target`` nothing changes.  Otherwise the budget moves to the
model's solution of ``a + b * budget = target`` limited to ``max_step`` (fraction of the
budget) and ``max_step_abs`` tokens per frame, then clamped to ``[min_budget, max_budget]``.
Anti-windup: when the encoder used clearly fewer tokens than the budget (small cloud), the
budget is not increased, and decreases start from the tokens actually used.  As a safety net,
``miss_backoff_frames`` consecutive frames over the deadline force a decrease of ``max_step``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["BudgetControllerConfig", "BudgetController", "BudgetState", "ResidualScreen", "Screening",
           "LatencyTarget", "LatencyController", "check_real", "check_int", "check_screen_fields",
           "CHANGE_KEEP", "WARMUP_FRAMES"]

# Smallest slope the model may report, as a fraction of the proportional slope.  Keeps the
# Newton step bounded when the fitted slope is near zero or negative (noise).
_MIN_SLOPE_FRACTION = 0.1
# Weight kept from old data when a change of load is detected.
CHANGE_KEEP = 0.05
# Frames before outlier tests start (the robust scale needs a few samples).
WARMUP_FRAMES = 3
# Smoothing of the robust residual scale and its floor relative to the latency level.
_SCALE_SMOOTHING = 0.9
_SCALE_FLOOR = 0.01
_INITIAL_SCALE = 0.05


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value == int(value)


def check_real(obj: Any, name: str, errors: list[str], lo: float | None, hi: float | None, lo_open: bool,
               hi_open: bool, allow_inf: bool = False) -> None:
    """Validate the number ``obj.<name>`` against [lo, hi] (open ends as told): normalise it to float,
    or append the reason to ``errors``."""
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        errors.append(f"{name} must be a number, got {v!r}")
        return
    v = float(v)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        errors.append(f"{name} must be finite, got {v!r}")
        return
    if lo is not None and (v < lo or (lo_open and v == lo)):
        errors.append(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
        return
    if hi is not None and (v > hi or (hi_open and v == hi)):
        errors.append(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v!r}")
        return
    setattr(obj, name, v)


def check_int(obj: Any, name: str, errors: list[str], lo: int, allow_none: bool = False) -> None:
    """Validate the integer ``obj.<name>`` >= lo (None allowed if told): normalise it to int, or append
    the reason to ``errors``."""
    v = getattr(obj, name)
    if v is None and allow_none:
        return
    if not _is_int(v):
        errors.append(f"{name} must be an integer, got {v!r}")
        return
    v = int(v)
    if v < lo:
        errors.append(f"{name} must be >= {lo}, got {v}")
        return
    setattr(obj, name, v)


@dataclasses.dataclass(frozen=True)
class Screening:
    """Verdict of :meth:`ResidualScreen.screen` on one measurement."""

    value: float
    """What the model should learn: the measurement (inlier, warm-up) or its Huber-clipped value."""
    outlier: bool
    """The residual was beyond the threshold (clipped, or part of a change of load)."""
    change: tuple[Any, ...] | None = None
    """Change of load: the payloads of the consecutive same-side outliers, oldest first (learn them
    raw after forgetting most of the past); None otherwise."""


class ResidualScreen:
    """Spike rejection of a latency model: robust residual scale, Huber clipping, change of load.

    The scale is an exponentially weighted mean absolute residual, floored at a fraction of the
    latency level. A residual beyond ``threshold`` scales is an outlier and is clipped to the
    threshold; ``change_frames`` consecutive outliers on the same side are a change of load.
    """

    def __init__(self, threshold: float = 4.0, change_frames: int = 2) -> None:
        self.threshold = threshold
        self.change_frames = change_frames
        self.reset()

    def reset(self) -> None:
        self._scale = math.nan
        self._sign = 0
        self._streak = 0
        self._pending: list[Any] = []

    @property
    def scale(self) -> float:
        """Current robust residual scale (NaN before :meth:`start`)."""
        return self._scale

    def start(self, level: float) -> None:
        """First measurement (taken as it is): the scale starts at a fraction of its level."""
        self._scale = _INITIAL_SCALE * level

    def _clear(self) -> None:
        self._sign = 0
        self._streak = 0
        self._pending.clear()

    def screen(self, measured: float, predicted: float, payload: Any = None, check: bool = True) -> Screening:
        """Screen ``measured`` against the model's ``predicted``; ``payload`` is returned with a change
        of load; ``check`` false (warm-up) accepts any residual."""
        resid = measured - predicted
        level = max(abs(predicted), measured, 1e-9)
        scale = max(self._scale, _SCALE_FLOOR * level)
        threshold = self.threshold * scale
        if not check or abs(resid) <= threshold:
            self._clear()
            self._scale = _SCALE_SMOOTHING * scale + (1.0 - _SCALE_SMOOTHING) * abs(resid)
            return Screening(measured, False)
        sign = 1 if resid > 0 else -1
        if sign != self._sign:
            self._streak = 0
            self._pending.clear()
        self._sign = sign
        self._streak += 1
        self._pending.append(payload)
        if self._streak >= self.change_frames:
            change = tuple(self._pending)
            self._clear()
            self._scale = scale
            return Screening(measured, True, change)
        self._scale = _SCALE_SMOOTHING * scale + (1.0 - _SCALE_SMOOTHING) * threshold
        return Screening(predicted + sign * threshold, True)


def check_screen_fields(obj: Any, errors: list[str]) -> None:
    """Validate the :class:`ResidualScreen` fields ``outlier_threshold`` (> 1, inf allowed) and
    ``change_frames`` (>= 1) of a controller config."""
    check_real(obj, "outlier_threshold", errors, 1.0, None, True, False, allow_inf=True)
    check_int(obj, "change_frames", errors, 1)


@dataclasses.dataclass
class LatencyTarget:
    """What the node's latency controllers share: the deadline, the setpoint and a hysteresis band
    (base of their configs; :meth:`check_target` validates it)."""

    deadline_s: float = 0.1
    """Per-frame latency deadline in seconds."""
    setpoint: float = 0.85
    """Target latency as a fraction of the deadline, in (0, 1]."""
    hysteresis: float = 0.05
    """Half-width of the no-change band around the target, as a fraction of it, in [0, 0.5)."""

    def check_target(self, errors: list[str]) -> None:
        check_real(self, "deadline_s", errors, 0.0, None, True, False)
        check_real(self, "setpoint", errors, 0.0, 1.0, True, False)
        check_real(self, "hysteresis", errors, 0.0, 0.5, False, True)

    @property
    def target_s(self) -> float:
        """Latency the controller aims for: ``deadline_s * setpoint``."""
        return self.deadline_s * self.setpoint


@dataclasses.dataclass
class BudgetControllerConfig(LatencyTarget):
    """Parameters of :class:`BudgetController`; validated on construction (ValueError)."""

    max_step: float = 0.25
    """Largest budget change per frame as a fraction of the current budget, in (0, 1]."""
    min_budget: int = 256
    max_budget: int = 65536
    initial_budget: int = 4096
    forgetting: float = 0.85
    """Forgetting factor of the latency model, in (0, 1]: memory ~ 1 / (1 - forgetting) frames."""
    max_step_abs: int | None = None
    """Optional cap on the budget change per frame in tokens (>= 1)."""
    outlier_threshold: float = 4.0
    """Residuals beyond this many robust scales are clipped (math.inf disables), > 1."""
    change_frames: int = 2
    """Consecutive same-side outliers that signal a change of load, >= 1."""
    miss_backoff_frames: int = 3
    """Consecutive deadline misses that force a decrease of max_step (0 disables)."""
    saturation_slack: float = 0.1
    """Frames with tokens < (1 - slack) * budget are content-limited (no increase), in [0, 1)."""
    slope_prior_weight: float = 0.01
    """Strength of the proportional-slope prior (relative token variance at which data and
    prior weigh equally), >= 0."""

    def __post_init__(self) -> None:
        errors: list[str] = []

        def real(name: str, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool,
                 allow_inf: bool = False) -> None:
            check_real(self, name, errors, lo, hi, lo_open, hi_open, allow_inf)

        def integer(name: str, lo: int, allow_none: bool = False) -> None:
            check_int(self, name, errors, lo, allow_none)

        self.check_target(errors)
        real("max_step", 0.0, 1.0, True, False)
        real("forgetting", 0.0, 1.0, True, False)
        check_screen_fields(self, errors)
        real("saturation_slack", 0.0, 1.0, False, True)
        real("slope_prior_weight", 0.0, None, False, False)
        integer("min_budget", 1)
        integer("max_budget", 1)
        integer("initial_budget", 1)
        integer("max_step_abs", 1, allow_none=True)
        integer("miss_backoff_frames", 0)
        if not errors:
            if self.max_budget < self.min_budget:
                errors.append(
                    f"max_budget ({self.max_budget}) must be >= min_budget ({self.min_budget})"
                )
            elif not self.min_budget <= self.initial_budget <= self.max_budget:
                errors.append(
                    f"initial_budget ({self.initial_budget}) must lie in "
                    f"[min_budget, max_budget] = [{self.min_budget}, {self.max_budget}]"
                )
        if errors:
            raise ValueError("invalid BudgetControllerConfig: " + "; ".join(errors))


@dataclasses.dataclass(frozen=True)
class BudgetState:
    """Diagnostics snapshot of a :class:`BudgetController`."""

    budget: int
    intercept_s: float  # model a (NaN before the first measurement)
    slope_s_per_token: float  # model b (NaN before the first measurement)
    predicted_latency_s: float  # model prediction at `budget` (NaN before the first measurement)
    target_s: float
    deadline_s: float
    over_deadline_streak: int  # consecutive measured frames with latency > deadline
    frames: int  # accepted measurements
    ignored: int  # rejected measurements (non-finite / negative latency, bad tokens)
    outliers: int  # measurements clipped as outliers
    load_changes: int  # detected changes of load (model partially reset)
    last_latency_s: float
    last_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _LatencyModel:
    """Exponentially weighted least squares ``latency = a + b * tokens`` with a slope prior."""

    def __init__(self, forgetting: float, prior_weight: float) -> None:
        self.forgetting = forgetting
        self.prior_weight = prior_weight
        self.reset()

    def reset(self) -> None:
        self._w = self._t = self._l = self._tt = self._tl = 0.0
        self.count = 0

    def add(self, tokens: float, latency: float) -> None:
        f = self.forgetting
        self._w = f * self._w + 1.0
        self._t = f * self._t + tokens
        self._l = f * self._l + latency
        self._tt = f * self._tt + tokens * tokens
        self._tl = f * self._tl + tokens * latency
        self.count += 1

    def discount(self, keep: float) -> None:
        self._w *= keep
        self._t *= keep
        self._l *= keep
        self._tt *= keep
        self._tl *= keep

    @property
    def ready(self) -> bool:
        return self._w > 0.0

    def coefficients(self) -> tuple[float, float]:
        """(a, b); only valid when :attr:`ready`."""
        w = self._w
        t_mean = self._t / w
        l_mean = self._l / w
        t_ref = max(t_mean, 1.0)
        var_t = max(self._tt / w - t_mean * t_mean, 0.0)
        cov_tl = self._tl / w - t_mean * l_mean
        slope_prior = max(l_mean, 1e-12) / t_ref
        k = self.prior_weight * t_ref * t_ref
        denom = var_t + k
        slope = (cov_tl + k * slope_prior) / denom if denom > 0.0 else slope_prior
        slope = max(slope, _MIN_SLOPE_FRACTION * slope_prior)
        return l_mean - slope * t_mean, slope

    def predict(self, tokens: float) -> float:
        a, b = self.coefficients()
        return a + b * tokens


class LatencyController:
    """What the node's controllers share: a :class:`LatencyTarget` config (``_config``) changed at run
    time through :meth:`reconfigure`, a :class:`ResidualScreen` (``_screen``) and a deadline-miss streak
    (``_over_streak``)."""

    _config: Any
    _screen: ResidualScreen
    _over_streak: int

    @property
    def deadline_s(self) -> float:
        return self._config.deadline_s

    def set_deadline(self, deadline_s: float, setpoint: float | None = None) -> Any:
        """Change the deadline (and optionally the setpoint); returns what :meth:`reconfigure` returns."""
        changes: dict[str, Any] = {"deadline_s": deadline_s}
        if setpoint is not None:
            changes["setpoint"] = setpoint
        return self.reconfigure(**changes)

    def reconfigure(self, **changes: Any) -> Any:
        raise NotImplementedError

    def _replace_config(self, changes: dict[str, Any]) -> Any:
        """Validate and install ``changes`` to the config (ValueError: nothing changes); returns the old one."""
        cls = type(self._config)
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {unknown}")
        old = self._config
        self._config = dataclasses.replace(old, **changes)  # validates in __post_init__
        self._screen.threshold, self._screen.change_frames = self._config.outlier_threshold, self._config.change_frames
        if self._config.deadline_s != old.deadline_s:
            self._over_streak = 0
        return old


class BudgetController(LatencyController):
    """Picks the next frame's token budget from measured latency (see module docstring).

    Example::

        ctl = BudgetController(BudgetControllerConfig(deadline_s=0.1, initial_budget=4096))
        budget = ctl.budget
        for frame in frames:
            t0 = time.monotonic()
            used = run_model(frame, max_tokens=budget)
            budget = ctl.update(time.monotonic() - t0, used)
    """

    def __init__(self, config: BudgetControllerConfig | None = None) -> None:
        self._config = config if config is not None else BudgetControllerConfig()
        if not isinstance(self._config, BudgetControllerConfig):
            raise TypeError(f"config must be a BudgetControllerConfig, got {type(config).__name__}")
        self._model = _LatencyModel(self._config.forgetting, self._config.slope_prior_weight)
        self._screen = ResidualScreen(self._config.outlier_threshold, self._config.change_frames)
        self.reset()

    # ----------------------------------------------------------------------------------------
    # public API

    @property
    def config(self) -> BudgetControllerConfig:
        return self._config

    @property
    def budget(self) -> int:
        """Budget for the next frame."""
        return self._budget

    def reset(self) -> None:
        """Forget the model and statistics; the budget returns to ``initial_budget``."""
        self._model.reset()
        self._budget = int(self._config.initial_budget)
        self._screen.reset()
        self._over_streak = 0
        self._frames = 0
        self._ignored = 0
        self._outliers = 0
        self._load_changes = 0
        self._last_latency = math.nan
        self._last_tokens = -1

    def update(self, latency_s: float, tokens: int) -> int:
        """Feed one frame's measured latency (s) and encoder token count; return the next budget.

        Non-finite or negative latencies and negative/non-finite token counts are ignored (the
        budget is returned unchanged and counted in ``state.ignored``).
        """
        try:
            latency = float(latency_s)
            tok_f = float(tokens)
        except (TypeError, ValueError):
            self._ignored += 1
            return self._budget
        if not (math.isfinite(latency) and latency >= 0.0 and math.isfinite(tok_f) and tok_f >= 0.0):
            self._ignored += 1
            return self._budget
        tok = int(round(tok_f))
        cfg = self._config

        self._frames += 1
        self._last_latency = latency
        self._last_tokens = tok
        self._over_streak = self._over_streak + 1 if latency > cfg.deadline_s else 0
        self._observe(float(tok), latency)
        self._budget = self._decide(tok)
        return self._budget

    def late_frame(self) -> int:
        """A frame that missed the deadline without a latency to learn from (the node abandoned it for a
        newer cloud): it extends the over-deadline streak (``miss_backoff_frames`` then cuts the budget)
        and teaches the model nothing. Returns the next budget."""
        self._frames += 1
        self._over_streak += 1
        self._budget = self._decide(self._last_tokens if self._last_tokens else self._budget)
        return self._budget

    def set_bounds(self, min_budget: int, max_budget: int) -> int:
        """Change the budget clamp; the current budget is clamped immediately and returned."""
        return self.reconfigure(min_budget=min_budget, max_budget=max_budget)

    def reconfigure(self, **changes: Any) -> int:
        """Replace any config fields at run time (validated; on error nothing changes).

        If the bounds change and ``initial_budget`` is not given, it is clamped into the new
        bounds.  The model is kept.  Returns the (possibly clamped) current budget.
        """
        cfg = self._config
        if "initial_budget" not in changes and ("min_budget" in changes or "max_budget" in changes):
            lo = changes.get("min_budget", cfg.min_budget)
            hi = changes.get("max_budget", cfg.max_budget)
            if _is_int(lo) and _is_int(hi) and lo <= hi:
                changes["initial_budget"] = min(max(cfg.initial_budget, int(lo)), int(hi))
        self._replace_config(changes)
        self._model.forgetting = self._config.forgetting
        self._model.prior_weight = self._config.slope_prior_weight
        self._budget = self._clamp(self._budget)
        return self._budget

    @property
    def state(self) -> BudgetState:
        cfg = self._config
        if self._model.ready:
            a, b = self._model.coefficients()
            pred = a + b * self._budget
        else:
            a = b = pred = math.nan
        return BudgetState(
            budget=self._budget,
            intercept_s=a,
            slope_s_per_token=b,
            predicted_latency_s=pred,
            target_s=cfg.target_s,
            deadline_s=cfg.deadline_s,
            over_deadline_streak=self._over_streak,
            frames=self._frames,
            ignored=self._ignored,
            outliers=self._outliers,
            load_changes=self._load_changes,
            last_latency_s=self._last_latency,
            last_tokens=self._last_tokens,
        )

    # ----------------------------------------------------------------------------------------
    # internals

    def _clamp(self, value: float) -> int:
        cfg = self._config
        return int(min(max(int(round(value)), cfg.min_budget), cfg.max_budget))

    def _max_step(self, base: float) -> float:
        cfg = self._config
        step = max(1.0, cfg.max_step * base)
        if cfg.max_step_abs is not None:
            step = min(step, float(cfg.max_step_abs))
        return step

    def _observe(self, tok: float, latency: float) -> None:
        """Robust model update: Huber-clip outliers, detect changes of load (:class:`ResidualScreen`)."""
        model = self._model
        if not model.ready:
            model.add(tok, latency)
            self._screen.start(latency)
            return
        verdict = self._screen.screen(latency, model.predict(tok), payload=(tok, latency),
                                      check=model.count >= WARMUP_FRAMES)
        self._outliers += int(verdict.outlier)
        if verdict.change is not None:
            # Change of load: forget most of the past, learn from the raw new measurements.
            model.discount(CHANGE_KEEP)
            for t, l in verdict.change:
                model.add(t, l)
            self._load_changes += 1
        else:
            model.add(tok, verdict.value)

    def _decide(self, tok: int) -> int:
        cfg = self._config
        budget = self._budget
        target = cfg.target_s
        a, b = self._model.coefficients()
        predicted = a + b * budget
        content_limited = tok < (1.0 - cfg.saturation_slack) * budget
        # base for decreases: a small cloud only used `tok` tokens, cut from there
        down_base = min(budget, max(tok, cfg.min_budget)) if content_limited else budget

        new = float(budget)
        if abs(predicted - target) > cfg.hysteresis * target:
            wanted = (target - a) / b
            if wanted > budget:
                if not content_limited:  # anti-windup: more budget would not be used
                    new = min(wanted, budget + self._max_step(budget))
            else:
                new = max(wanted, down_base - self._max_step(down_base))
        if cfg.miss_backoff_frames and self._over_streak >= cfg.miss_backoff_frames:
            new = min(new, down_base - self._max_step(down_base))
        return self._clamp(new)
