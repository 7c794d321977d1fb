"""The node's /diagnostics status values as pure functions of its counters, controller and parameters."""
from __future__ import annotations

import math
from typing import Any, Mapping

from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.operating_points import OperatingPointController
from foundry_ros.frame_stats import StatsSnapshot
from foundry_ros.model import ModelInfo

__all__ = ["diagnostic_values", "control_values", "key_values", "infeasible_message"]


def infeasible_message(controller: BudgetController | OperatingPointController) -> str:
    """Why the deadline cannot be held ("" when it can, or with a token-budget controller): the
    cheapest operating point's predicted latency against the deadline."""
    if not isinstance(controller, OperatingPointController) or controller.deadline_feasible:
        return ""
    st = controller.state
    return (f"deadline {st.deadline_s * 1e3:.0f} ms is below the cheapest operating point ({st.ladder[0]} "
            f"predicted {st.floor_predicted_latency_s * 1e3:.0f} ms under the measured load): raise deadline_ms, "
            f"free the CPU, or feed fewer points (preprocess crop / max_range)")


def control_values(controller: BudgetController | OperatingPointController, params: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The controller's part of the status: the chosen operating point, its predicted latency and the
    load factor (operating points), or the budget and its bounds (token budget)."""
    if isinstance(controller, OperatingPointController):
        st = controller.state
        fixed = params["operating_point"] != P.AUTO
        point = params["operating_point"] if fixed else st.point
        return dict(control="operating_points", operating_point=point,
                    operating_point_mode="fixed" if fixed else "auto",
                    predicted_latency_ms=controller.predict(point) * 1e3, load_factor=st.load_factor,
                    overhead_ms=st.overhead_s * 1e3,
                    operating_point_switches=st.switches, load_changes=st.load_changes,
                    operating_points=",".join(controller.ladder), deadline_feasible=st.deadline_feasible,
                    cheapest_predicted_ms=st.floor_predicted_latency_s * 1e3)
    st, cfg = controller.state, controller.config
    return dict(control="token_budget", next_budget=st.budget, min_budget=cfg.min_budget, max_budget=cfg.max_budget,
                predicted_latency_ms=st.predicted_latency_s * 1e3)


def diagnostic_values(stats: StatsSnapshot, controller: BudgetController | OperatingPointController,
                      params: Mapping[str, Any], model: ModelInfo, sensor_period_s: float | None,
                      shm_segment_bytes: int | None = None) -> dict[str, Any]:
    """``level_msg`` ((level, message) of :func:`params.diagnostic_level`) and the status values
    (``shm_segment_bytes``: the Fast DDS shared-memory segment of this process, None if unknown)."""
    return dict(
        level_msg=P.diagnostic_level(
            frames=stats.frames, last_over_deadline=stats.last_over_deadline, over_streak=stats.over_streak,
            error_frames=params["diagnostics_error_frames"], predictor_failed=stats.predictor_failed_last,
            decode_errors_recent=stats.decode_errors_recent, incompatible_qos=stats.incompatible_qos,
            incompatible_qos_recent=stats.incompatible_qos_recent, incompatible_reason=stats.incompatible_reason,
            infeasible=infeasible_message(controller)),
        backend=model.backend, precision=model.precision, model_hash=model.model_hash,
        budget=stats.last_budget, **control_values(controller, params),
        controller_enabled=params["controller_enabled"], deadline_ms=controller.deadline_s * 1e3,
        deadline_source="parameter" if params["deadline_ms"] > 0 else "sensor period",
        sensor_period_ms=(sensor_period_s or math.nan) * 1e3,
        latency_last_ms=stats.last_latency_s * 1e3, latency_p50_ms=stats.latency_p50_s * 1e3,
        latency_p95_ms=stats.latency_p95_s * 1e3, over_deadline_streak=stats.over_streak,
        tokens_last=stats.last_tokens, frames_received=stats.received, frames_processed=stats.frames,
        frames_dropped_stale=stats.stale, frames_abandoned_late=stats.abandoned, frames_dropped_age=stats.dropped_age,
        frames_lost=stats.lost,
        decode_errors=stats.decode_errors, predictor_errors=stats.predictor_errors,
        publish_errors=stats.publish_errors, missing_extra_fields=stats.missing_extra,
        messages_lost_events=stats.messages_lost, incompatible_qos_events=stats.incompatible_qos,
        largest_cloud_mb=stats.largest_cloud_bytes / 2**20,
        shm_segment_mb=shm_segment_bytes / 2**20 if shm_segment_bytes else math.nan)


def key_values(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, text) pairs of DiagnosticStatus.values: floats with 3 decimals ("nan" for NaN)."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    return [(key, text(value)) for key, value in values.items()]
