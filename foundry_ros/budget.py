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

__all__ = ["BudgetControllerConfig", "BudgetController", "BudgetState"]

# Smallest slope the model may report, as a fraction of the proportional slope.  Keeps the
# Newton step bounded when the fitted slope is near zero or negative (noise).
_MIN_SLOPE_FRACTION = 0.1
# Weight kept from old data when a change of load is detected.
_CHANGE_KEEP = 0.05
# Frames before outlier tests start (the robust scale needs a few samples).
_WARMUP_FRAMES = 3
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


@dataclasses.dataclass
class BudgetControllerConfig:
    """Parameters of :class:`BudgetController`; validated on construction (ValueError)."""

    deadline_s: float = 0.1
    """Per-frame latency deadline in seconds."""
    setpoint: float = 0.85
    """Target latency as a fraction of the deadline, in (0, 1]."""
    hysteresis: float = 0.05
    """Half-width of the no-change band around the target, as a fraction of it, in [0, 0.5)."""
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
            v = getattr(self, name)
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
            setattr(self, name, v)

        def integer(name: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not _is_int(v):
                errors.append(f"{name} must be an integer, got {v!r}")
                return
            v = int(v)
            if v < lo:
                errors.append(f"{name} must be >= {lo}, got {v}")
                return
            setattr(self, name, v)

        real("deadline_s", 0.0, None, True, False)
        real("setpoint", 0.0, 1.0, True, False)
        real("hysteresis", 0.0, 0.5, False, True)
        real("max_step", 0.0, 1.0, True, False)
        real("forgetting", 0.0, 1.0, True, False)
        real("outlier_threshold", 1.0, None, True, False, allow_inf=True)
        real("saturation_slack", 0.0, 1.0, False, True)
        real("slope_prior_weight", 0.0, None, False, False)
        integer("min_budget", 1)
        integer("max_budget", 1)
        integer("initial_budget", 1)
        integer("max_step_abs", 1, allow_none=True)
        integer("change_frames", 1)
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

    @property
    def target_s(self) -> float:
        """Latency the controller aims for: ``deadline_s * setpoint``."""
        return self.deadline_s * self.setpoint


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


class BudgetController:
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
        self._scale = math.nan
        self._outlier_sign = 0
        self._outlier_streak = 0
        self._pending: list[tuple[float, float]] = []
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

    def set_deadline(self, deadline_s: float, setpoint: float | None = None) -> int:
        """Change the deadline (and optionally the setpoint); takes effect at the next update."""
        changes: dict[str, Any] = {"deadline_s": deadline_s}
        if setpoint is not None:
            changes["setpoint"] = setpoint
        return self.reconfigure(**changes)

    def set_bounds(self, min_budget: int, max_budget: int) -> int:
        """Change the budget clamp; the current budget is clamped immediately and returned."""
        return self.reconfigure(min_budget=min_budget, max_budget=max_budget)

    def reconfigure(self, **changes: Any) -> int:
        """Replace any config fields at run time (validated; on error nothing changes).

        If the bounds change and ``initial_budget`` is not given, it is clamped into the new
        bounds.  The model is kept.  Returns the (possibly clamped) current budget.
        """
        names = {f.name for f in dataclasses.fields(BudgetControllerConfig)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown BudgetControllerConfig field(s): {unknown}")
        cfg = self._config
        if "initial_budget" not in changes and ("min_budget" in changes or "max_budget" in changes):
            lo = changes.get("min_budget", cfg.min_budget)
            hi = changes.get("max_budget", cfg.max_budget)
            if _is_int(lo) and _is_int(hi) and lo <= hi:
                changes["initial_budget"] = min(max(cfg.initial_budget, int(lo)), int(hi))
        new_cfg = dataclasses.replace(cfg, **changes)  # validates in __post_init__
        self._config = new_cfg
        self._model.forgetting = new_cfg.forgetting
        self._model.prior_weight = new_cfg.slope_prior_weight
        if new_cfg.deadline_s != cfg.deadline_s:
            self._over_streak = 0
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
        """Robust model update: Huber-clip outliers, detect changes of load."""
        model = self._model
        cfg = self._config
        if not model.ready:
            model.add(tok, latency)
            self._scale = _INITIAL_SCALE * latency
            return
        pred = model.predict(tok)
        resid = latency - pred
        level = max(abs(pred), latency, 1e-9)
        scale = max(self._scale, _SCALE_FLOOR * level)
        threshold = cfg.outlier_threshold * scale
        if model.count < _WARMUP_FRAMES or abs(resid) <= threshold:
            model.add(tok, latency)
            self._outlier_streak = 0
            self._outlier_sign = 0
            self._pending.clear()
            self._scale = _SCALE_SMOOTHING * scale + (1.0 - _SCALE_SMOOTHING) * abs(resid)
            return

        self._outliers += 1
        sign = 1 if resid > 0 else -1
        if sign != self._outlier_sign:
            self._outlier_streak = 0
            self._pending.clear()
        self._outlier_sign = sign
        self._outlier_streak += 1
        self._pending.append((tok, latency))
        if self._outlier_streak >= cfg.change_frames:
            # Change of load: forget most of the past, learn from the raw new measurements.
            model.discount(_CHANGE_KEEP)
            for t, l in self._pending:
                model.add(t, l)
            self._load_changes += 1
            self._outlier_streak = 0
            self._outlier_sign = 0
            self._pending.clear()
            self._scale = scale
        else:
            model.add(tok, pred + sign * threshold)  # Huber-clipped
            self._scale = _SCALE_SMOOTHING * scale + (1.0 - _SCALE_SMOOTHING) * threshold

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
