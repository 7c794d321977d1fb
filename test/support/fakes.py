"""FakePredictor: a fake with the contract of foundry_core.runtime.predictor.Predictor (no torch).

labels = (x > 0); confidence 0.9 / 0.6; segments = int(first extra channel) when the input has
extra channels (so tests can check that extra fields travel index-aligned), else (y > 0) + 10.
The budget is honoured like a real model: tokens_in_encoder = min(budget, num_centers) and the call
sleeps base_s + sec_per_token * tokens, so the node's budget controller has something to control.
A cloud containing a point with x == FAIL_X raises (predictor failure path).

With ``operating_points`` (e.g. FAKE_POINTS) the fake has the operating-point contract of the
Predictor: ``operating_points`` (cheapest first), ``__call__(points, operating_point=name_or_op)``
(the call sleeps ``point_cost_s[name] * load`` and runs c = the point's centers, at its budget),
``result.report.operating_point`` and ``calibrate(cloud=None, repeats=3) -> {name: median ms}``.

``python -m support.fakes [--operating-points] NODE_ARGS...`` runs the Foundry node with this fake
(in_channels 4: xyz + intensity), with FAKE_POINTS when asked.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from foundry_core.configs import OperatingPoint
from foundry_core.runtime.types import FrameReport, LabelInfo, PredictorResult

FAIL_X = 12345.0
#: Operating points of a fake scene model, cheapest first, and what each call costs (sleep).
FAKE_POINTS = (OperatingPoint("tiny", points=2048, centers=64, budget=32, miou=41.0),
               OperatingPoint("small", points=4096, centers=128, budget=96, miou=52.5),
               OperatingPoint("medium", points=8192, centers=256, budget=192, miou=58.0),
               OperatingPoint("full", points=16384, centers=512, budget=None, miou=61.5))
FAKE_POINT_COST_S = {"tiny": 0.002, "small": 0.006, "medium": 0.015, "full": 0.040}


class FakePredictor:
    backend = "fake-cpu"
    precision = "fp32"
    model_hash = "fake0123456789ab"
    min_budget = 16
    max_budget = 16384

    def __init__(self, num_centers: int = 8192, sec_per_token: float = 4e-6, base_s: float = 0.001,
                 dim: int = 8, in_channels: int | None = None, operating_points: Sequence[OperatingPoint] = (),
                 point_cost_s: Mapping[str, float] | None = None) -> None:
        self.num_centers, self.sec_per_token, self.base_s, self.dim = num_centers, sec_per_token, base_s, dim
        self.in_channels = in_channels  # like Predictor.in_channels (None: not checked by the node)
        self.operating_points = list(operating_points)  # cheapest first; [] = none (token budget only)
        self.point_cost_s = dict(point_cost_s if point_cost_s is not None else FAKE_POINT_COST_S)
        self.load = 1.0  # multiplies the cost of an operating-point call (a load step in tests)
        self.calls = 0
        self.point_calls: dict[str, int] = {}

    def _operating_point(self, operating_point: str | OperatingPoint) -> OperatingPoint:
        if isinstance(operating_point, OperatingPoint):
            return operating_point
        for op in self.operating_points:
            if op.name == operating_point:
                return op
        raise ValueError(f"unknown operating point {operating_point!r}: the model has "
                         f"{[op.name for op in self.operating_points]}")

    def calibrate(self, cloud: Any = None, repeats: int = 3, should_stop: Any = None) -> dict[str, float]:
        """Median latency (ms) of ``repeats`` calls at every operating point, like Predictor.calibrate."""
        if cloud is None:
            cloud = np.random.default_rng(0).uniform(-5, 5, (256, self.in_channels or 3)).astype(np.float32)
        out = {}
        for op in self.operating_points:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self(cloud, operating_point=op.name)
                times.append((time.perf_counter() - t0) * 1e3)
            out[op.name] = statistics.median(times)
        return out

    def label_info(self) -> list[LabelInfo]:
        return [LabelInfo(0, "x_not_positive", (1.0, 0.0, 0.0, 1.0)),
                LabelInfo(1, "x_positive", (0.0, 1.0, 0.0, 1.0))]

    def __call__(self, points, budget=None, fusion_threshold=None, operating_point=None,
                 abandon=None) -> PredictorResult:
        t0 = time.perf_counter()
        op = self._operating_point(operating_point) if operating_point is not None else None
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < (self.in_channels or 3):
            raise ValueError(f"points must be (N, {self.in_channels or 3}+), got {pts.shape}")
        if np.any(pts[:, 0] == FAIL_X):
            raise RuntimeError("fake predictor failure requested by the input")
        self.calls += 1
        n = pts.shape[0]
        if op is None:
            c = self.num_centers
            tokens = c if budget is None else max(1, min(int(budget), c))
            time.sleep(self.base_s + self.sec_per_token * tokens)
        else:
            self.point_calls[op.name] = self.point_calls.get(op.name, 0) + 1
            c = op.centers
            budget = op.budget if op.budget is not None else c
            tokens = min(budget, c)
            if fusion_threshold is None and op.fusion_threshold is not None:
                fusion_threshold = op.fusion_threshold
            time.sleep(self.point_cost_s[op.name] * self.load)
        if abandon is not None and abandon():           # asked after the "network", as the Predictor does
            from foundry_core.runtime.types import FrameAbandoned
            raise FrameAbandoned("abandoned after the network")
        labels = (pts[:, 0] > 0).astype(np.int32)
        confidence = np.where(labels == 1, 0.9, 0.6).astype(np.float32)
        if pts.shape[1] > 3:
            segments = np.rint(pts[:, 3]).astype(np.int32)
        else:
            segments = (pts[:, 1] > 0).astype(np.int32) + 10
        t = min(tokens, 32, max(n, 1))
        centers = pts[:t, :3].copy() if n >= t else np.zeros((t, 3), np.float32)
        embeddings = np.arange(t * self.dim, dtype=np.float32).reshape(t, self.dim)
        token_segments = np.arange(t, dtype=np.int32) % 4
        total_ms = (time.perf_counter() - t0) * 1e3
        report = FrameReport(
            points_in=n, points_used=n, points_unlabelled=0, tokens_in_encoder=tokens,
            token_budget=int(budget) if budget is not None else c,
            fusion_threshold=float(fusion_threshold) if fusion_threshold is not None else math.nan,
            num_centers=c, backend=self.backend, precision=self.precision, model_hash=self.model_hash,
            operating_point=op.name if op is not None else "",
            timings_ms={"preprocess": 0.1 * total_ms, "tokenize": 0.2 * total_ms, "encode": 0.6 * total_ms,
                        "head": 0.1 * total_ms, "total": total_ms})
        return PredictorResult(labels=labels, confidence=confidence, segments=segments, centers=centers,
                               embeddings=embeddings, token_segments=token_segments, report=report)


def _run_node(argv: list[str]) -> int:
    """The Foundry node with the fake (``--operating-points``: with FAKE_POINTS)."""
    from foundry_ros.node import main

    points = FAKE_POINTS if "--operating-points" in argv else ()
    argv = [a for a in argv if a != "--operating-points"]
    return main(argv, predictor_factory=lambda *_: FakePredictor(in_channels=4, operating_points=points))


if __name__ == "__main__":
    sys.exit(_run_node(sys.argv[1:]))
