"""The node's /diagnostics status values as pure functions of its counters, controller and parameters."""
from __future__ import annotations

import math
from typing import Any, Mapping

from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.frame_stats import StatsSnapshot
from foundry_ros.model import ModelInfo

__all__ = ["diagnostic_values", "key_values"]


def diagnostic_values(stats: StatsSnapshot, controller: BudgetController, params: Mapping[str, Any],
                      model: ModelInfo, sensor_period_s: float | None) -> dict[str, Any]:
    """``level_msg`` ((level, message) of :func:`params.diagnostic_level`) and the status values."""
    st, cfg = controller.state, controller.config
    return dict(
        level_msg=P.diagnostic_level(
            frames=stats.frames, last_over_deadline=stats.last_over_deadline, over_streak=stats.over_streak,
            error_frames=params["diagnostics_error_frames"], predictor_failed=stats.predictor_failed_last,
            decode_errors_recent=stats.decode_errors_recent),
        backend=model.backend, precision=model.precision, model_hash=model.model_hash,
        budget=stats.last_budget, next_budget=st.budget, min_budget=cfg.min_budget, max_budget=cfg.max_budget,
        controller_enabled=params["controller_enabled"], deadline_ms=st.deadline_s * 1e3,
        deadline_source="parameter" if params["deadline_ms"] > 0 else "sensor period",
        sensor_period_ms=(sensor_period_s or math.nan) * 1e3,
        latency_last_ms=stats.last_latency_s * 1e3, latency_p50_ms=stats.latency_p50_s * 1e3,
        latency_p95_ms=stats.latency_p95_s * 1e3, over_deadline_streak=stats.over_streak,
        tokens_last=stats.last_tokens, frames_received=stats.received, frames_processed=stats.frames,
        frames_dropped_stale=stats.stale, frames_dropped_age=stats.dropped_age, decode_errors=stats.decode_errors,
        predictor_errors=stats.predictor_errors, publish_errors=stats.publish_errors,
        missing_extra_fields=stats.missing_extra, messages_lost=stats.messages_lost,
        incompatible_qos_events=stats.incompatible_qos)


def key_values(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, text) pairs of DiagnosticStatus.values: floats with 3 decimals ("nan" for NaN)."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    return [(key, text(value)) for key, value in values.items()]
