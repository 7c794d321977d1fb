"""Operating points of a predictor: the ordered compute range (cheapest first) the node picks from.

An operating point (configs.OperatingPoint) sets, for one call, the points that reach the network
(max_points), the token centers c (max_centers) and the encoder token budget / fusion threshold of
a gated student. A model fine-tuned with operating points carries its list in the metadata
(``meta["operating_points"]``, list of dicts, cheapest first); a model without one gets a default
set derived from the predictor's PreprocessConfig (:func:`default_operating_points`).

Validation (:func:`operating_points_of`): names unique, points and centers non-decreasing along
the list, budgets clamped to the backbone's ``budget_range(centers)``; a backbone with a fixed token
count (teacher, ungated student, baseline) gets budget and fusion threshold None (it has neither).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from ..configs import OperatingPoint
from ..typed_yaml import ConfigError, from_dict, to_dict
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)              # of max_points / max_centers, cheapest first
DEFAULT_NAMES = ("eighth", "quarter", "half", "full")
# Stages of a Predictor call whose cost the operating point sets. Preprocess (crop and cap over the N
# input points) and postprocess (labels mapped back to every input point) grow with the input cloud,
# not with the point: a controller counts them with the rest of the frame's overhead.
POINT_STAGES = ("tokenize", "encode", "head")


def to_meta(points: Sequence[OperatingPoint]) -> list[dict]:
    """Operating points -> the metadata list (dicts, cheapest first)."""
    return [to_dict(op) for op in points]


def from_meta(items: Any) -> list[OperatingPoint]:
    """The metadata list -> OperatingPoints (ConfigError when it is not a list of valid mappings)."""
    if not isinstance(items, list):
        raise ConfigError(f"model operating_points must be a list, got {type(items).__name__}")
    return [from_dict(OperatingPoint, item, f"model operating_points[{i}]") for i, item in enumerate(items)]


def check_order(points: Sequence[OperatingPoint]) -> None:
    """ConfigError unless names are unique and points / centers are non-decreasing (cheapest first)."""
    names = [op.name for op in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"operating points: names must be unique, got {names}")
    for a, b in zip(points, points[1:]):
        if b.points < a.points or b.centers < a.centers:
            raise ConfigError(f"operating points must be ordered cheapest first (points and centers "
                              f"non-decreasing): {a.name} ({a.points} points, {a.centers} centers) comes "
                              f"before {b.name} ({b.points} points, {b.centers} centers)")


def fit_to_backbone(op: OperatingPoint, backbone: Any) -> OperatingPoint:
    """The budget clamped to backbone.budget_range(op.centers); no budget / threshold for a backbone
    with a fixed token count."""
    if not backbone.budget_adjustable:
        return replace(op, budget=None, fusion_threshold=None)
    if op.budget is None:
        return op
    lo, hi = (int(v) for v in backbone.budget_range(op.centers))
    budget = min(max(int(op.budget), lo), hi)
    if budget != op.budget:
        log.warning("operating point %s: budget %d clamped to the backbone's range [%d, %d]", op.name,
                    op.budget, lo, hi)
    return replace(op, budget=budget)


def default_operating_points(pre: PreprocessConfig, backbone: Any) -> list[OperatingPoint]:
    """max_points and max_centers x 1/8, 1/4, 1/2, 1 (centers >= min_centers); budgets evenly spaced
    over the backbone's budget_range(max_centers), clamped to each point's range; the gate's own
    threshold (None). Budget None for a backbone with a fixed token count."""
    lo, hi = (int(v) for v in backbone.budget_range(pre.max_centers))
    steps = len(DEFAULT_FRACTIONS) - 1
    out = []
    for i, (name, f) in enumerate(zip(DEFAULT_NAMES, DEFAULT_FRACTIONS)):
        centers = min(pre.max_centers, max(pre.min_centers, int(round(pre.max_centers * f))))
        budget = int(round(lo + (hi - lo) * i / steps)) if backbone.budget_adjustable else None
        op = OperatingPoint(name=name, points=max(1, int(round(pre.max_points * f))), centers=centers,
                            budget=budget, fusion_threshold=None)
        out.append(fit_to_backbone(op, backbone))
    return out


def operating_points_of(meta: dict, pre: PreprocessConfig, backbone: Any) -> list[OperatingPoint]:
    """The model's operating points (metadata, validated and fitted to the backbone), else the
    default set of the PreprocessConfig. ConfigError for an invalid list."""
    items = meta.get("operating_points")
    if not items:
        return default_operating_points(pre, backbone)
    points = from_meta(items)
    check_order(points)
    return [fit_to_backbone(op, backbone) for op in points]


def point_cost_ms(timings_ms: dict[str, float]) -> float:
    """The part of one call's latency (ms) that its operating point sets: the POINT_STAGES of
    FrameReport.timings_ms (0 for a call that never reached the network)."""
    return float(sum(float(timings_ms.get(k, 0.0)) for k in POINT_STAGES))


def call_preprocess(pre: PreprocessConfig, op: OperatingPoint | None) -> PreprocessConfig:
    """The PreprocessConfig of one call: max_points / max_centers of the operating point
    (min_centers capped at its centers); `pre` itself without one."""
    if op is None:
        return pre
    return replace(pre, max_points=int(op.points), max_centers=int(op.centers),
                   min_centers=min(pre.min_centers, int(op.centers)))


def sweep_extent(pre: PreprocessConfig, default: float = 30.0) -> float:
    """Horizontal range of a synthetic sweep that stays inside the preprocessing region (range gate
    and a crop box around the sensor)."""
    limits = [default]
    if pre.max_range is not None:
        limits.append(0.9 * pre.max_range)          # 3D range <= 1.1 x horizontal (beams within 25 deg)
    if pre.crop_box is not None:
        xmin, ymin, _, xmax, ymax, _ = pre.crop_box
        half = min(-xmin, -ymin, xmax, ymax)
        if half > 0:
            limits.append(half)
    return float(min(limits))


def synthetic_sweep(n: int, channels: int, max_range: float = 30.0, seed: int = 0) -> np.ndarray:
    """A LiDAR-sweep-like cloud (n, channels) float32 around a sensor 1.7 m above a ground plane:
    32 beams from -25 to +5 degrees, uniform azimuth; downward beams hit the ground (density falls
    with range), the others a wall at 0.3..1 x max_range (horizontal); extra channels in [0, 1)."""
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(rng.choice(np.linspace(-25.0, 5.0, 32), size=n))
    az = rng.uniform(-np.pi, np.pi, size=n)
    with np.errstate(divide="ignore"):
        ground = np.where(elev < 0, 1.7 / np.tan(np.abs(elev)), np.inf)
    horiz = np.minimum(np.minimum(ground, rng.uniform(0.3, 1.0, size=n) * max_range), max_range)
    xyz = np.stack([horiz * np.cos(az), horiz * np.sin(az), horiz * np.tan(elev)], 1)
    extra = rng.uniform(0.0, 1.0, size=(n, max(0, channels - 3)))
    return np.concatenate([xyz, extra], 1).astype(np.float32)
