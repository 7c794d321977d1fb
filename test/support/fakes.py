"""FakePredictor: a fake with the contract of foundry_core.runtime.predictor.Predictor (no torch).

labels = (x > 0); confidence 0.9 / 0.6; segments = int(first extra channel) when the input has
extra channels (so tests can check that extra fields travel index-aligned), else (y > 0) + 10.
The budget is honoured like a real model: tokens_in_encoder = min(budget, num_centers) and the call
sleeps base_s + sec_per_token * tokens, so the node's budget controller has something to control.
A cloud containing a point with x == FAIL_X raises (predictor failure path).
"""
from __future__ import annotations

import math
import time

import numpy as np

from foundry_core.runtime.types import FrameReport, LabelInfo, PredictorResult

FAIL_X = 12345.0


class FakePredictor:
    backend = "fake-cpu"
    precision = "fp32"
    model_hash = "fake0123456789ab"
    min_budget = 16
    max_budget = 16384

    def __init__(self, num_centers: int = 8192, sec_per_token: float = 4e-6, base_s: float = 0.001,
                 dim: int = 8, in_channels: int | None = None) -> None:
        self.num_centers, self.sec_per_token, self.base_s, self.dim = num_centers, sec_per_token, base_s, dim
        self.in_channels = in_channels  # like Predictor.in_channels (None: not checked by the node)
        self.calls = 0

    def label_info(self) -> list[LabelInfo]:
        return [LabelInfo(0, "x_not_positive", (1.0, 0.0, 0.0, 1.0)),
                LabelInfo(1, "x_positive", (0.0, 1.0, 0.0, 1.0))]

    def __call__(self, points, budget=None, fusion_threshold=None) -> PredictorResult:
        t0 = time.perf_counter()
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < (self.in_channels or 3):
            raise ValueError(f"points must be (N, {self.in_channels or 3}+), got {pts.shape}")
        if np.any(pts[:, 0] == FAIL_X):
            raise RuntimeError("fake predictor failure requested by the input")
        self.calls += 1
        n = pts.shape[0]
        c = self.num_centers
        tokens = c if budget is None else max(1, min(int(budget), c))
        time.sleep(self.base_s + self.sec_per_token * tokens)
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
            timings_ms={"preprocess": 0.1 * total_ms, "tokenize": 0.2 * total_ms, "encode": 0.6 * total_ms,
                        "head": 0.1 * total_ms, "total": total_ms})
        return PredictorResult(labels=labels, confidence=confidence, segments=segments, centers=centers,
                               embeddings=embeddings, token_segments=token_segments, report=report)
