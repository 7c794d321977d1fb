"""The InferenceReport of one frame as a pure function of the predictor's report, timings and counters."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from foundry_core.runtime.operating_points import POINT_STAGES, point_cost_ms
from foundry_ros.frame_stats import FrameRecord
from foundry_ros.model import ModelInfo
from foundry_ros.msg_values import f32, fill_message, u32

__all__ = ["StageTimes", "fusion_ratio", "report_fields", "build_report"]


@dataclasses.dataclass
class StageTimes:
    """Monotonic times (s) at which one frame passed each stage of the node."""

    received: float
    started: float
    decoded: float = math.nan
    predicted: float = math.nan
    mapped: float = math.nan
    published: float = math.nan

    @property
    def latency_s(self) -> float:
        """Receive -> publish."""
        return self.published - self.received

    @property
    def overhead_s(self) -> float:
        """The part of :attr:`latency_s` outside the predictor call (queueing, decode, mapping, publish)."""
        return self.latency_s - (self.predicted - self.decoded)

    def overhead_beyond_point_s(self, frame_report: Any | None) -> float:
        """The part of :attr:`latency_s` its operating point does not set: everything but the
        predictor's tokenize + encode + head (``point_cost_ms``; pre- and postprocessing grow with
        the input cloud, not with the point). :attr:`overhead_s` when the report has no timings."""
        timings = getattr(frame_report, "timings_ms", None) or {}
        if not any(k in timings for k in POINT_STAGES):
            return self.overhead_s
        return self.latency_s - point_cost_ms(timings) / 1e3


def fusion_ratio(tokens_in_encoder: int, num_centers: int) -> float:
    """tokens_in_encoder / num_centers in (0, 1]; 1.0 when nothing entered the encoder or c is unknown."""
    if num_centers > 0 and tokens_in_encoder > 0:
        return float(min(1.0, tokens_in_encoder / num_centers))
    return 1.0


def report_fields(frame_report: Any | None, *, times: StageTimes, points_in: int, budget: int, deadline_s: float,
                  record: FrameRecord, model: ModelInfo, operating_point: str = "") -> dict[str, Any]:
    """InferenceReport field values (all but ``header``) of one published frame.

    ``frame_report`` is the predictor's FrameReport, None when the cloud had no valid point (no
    predictor call); ``points_in`` counts the decoded (finite) points given to the predictor;
    ``operating_point`` is the point the frame ran at ("" under token-budget control).
    """
    fr = frame_report
    tokens = int(fr.tokens_in_encoder) if fr is not None else 0
    centers = int(getattr(fr, "num_centers", 0) or 0) if fr is not None else 0
    used = int(fr.points_used) if fr is not None else 0
    ms = dict(fr.timings_ms) if fr is not None else {}
    return {
        "operating_point": str(operating_point), "tokens_in_encoder": u32(tokens), "token_budget": u32(budget),
        "fusion_ratio": fusion_ratio(tokens, centers),
        "fusion_threshold": f32(fr.fusion_threshold) if fr is not None else math.nan,
        "num_centers": u32(centers),
        "backend": model.backend, "model_hash": model.model_hash,
        "precision": str(getattr(fr, "precision", model.precision)) if fr is not None else model.precision,
        "points_in": u32(points_in), "points_used": u32(used), "points_dropped": u32(points_in - used),
        "points_unlabelled": u32(fr.points_unlabelled) if fr is not None else 0,
        "latency_ms": float(times.latency_s * 1e3), "deadline_ms": float(deadline_s * 1e3),
        "preprocess_ms": float((times.decoded - times.started) * 1e3 + f32(ms.get("preprocess", 0.0))),
        "tokenize_ms": f32(ms.get("tokenize", 0.0)), "encode_ms": f32(ms.get("encode", 0.0)),
        "head_ms": float(f32(ms.get("head", 0.0)) + f32(ms.get("postprocess", 0.0))
                         + (times.mapped - times.predicted) * 1e3),
        "publish_ms": float((times.published - times.mapped) * 1e3),
        "frame_index": u32(record.index), "frames_dropped_stale": u32(record.stale),
        "frames_received": u32(record.received), "frames_stale_total": u32(record.stale_total),
        "frames_too_old": u32(record.too_old), "frames_lost": u32(record.lost), "frames_failed": u32(record.failed),
    }


def build_report(report_cls: type, header: Any, frame_report: Any | None, **kw: Any) -> Any:
    """A ``report_cls`` (foundry_msgs/InferenceReport) with ``header`` and :func:`report_fields`."""
    return fill_message(report_cls, header=header, **report_fields(frame_report, **kw))
