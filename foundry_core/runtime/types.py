"""Data types of the inference runtime, shared by the predictor and its users (the ROS node)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class NonFiniteOutputError(RuntimeError):
    """The network produced NaN / Inf logits or embeddings for a frame (its outputs are not published)."""


class CalibrationStopped(RuntimeError):
    """Predictor.calibrate was asked to stop (its should_stop callback returned True), e.g. by a shutdown."""


class FrameAbandoned(RuntimeError):
    """A Predictor call was abandoned between stages: its ``abandon`` callback returned True (e.g. the
    frame is past its deadline and a newer one is waiting). Nothing of the frame is returned."""


@dataclass
class FrameReport:
    """What one predictor call did."""

    points_in: int                  # points given (including non-finite ones)
    points_used: int                # points that reached the tokenizer (after crop / voxel / cap)
    points_unlabelled: int          # non-finite or outside the crop box / range gate (label -1)
    tokens_in_encoder: int          # max over the batch of tokens that entered the encoder
    token_budget: int               # the budget this call ran with (c when unbudgeted)
    fusion_threshold: float         # the gate's fusion threshold r in effect (nan: no gate)
    num_centers: int                # c chosen for this cloud
    backend: str                    # e.g. "torch-cpu", "torch-cuda", "onnxruntime-cpu"
    precision: str                  # "fp32" / "fp16"
    model_hash: str                 # sha256 prefix of the model file
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, tokenize, encode, head, total
    operating_point: str = ""       # name of the operating point of this call ("" when none was given)


@dataclass
class NetworkOutput:
    """What a runner (PyTorch eager or an exported graph) returns for one cloud of M used points
    and c token centers, in the model's frame."""

    labels: np.ndarray              # (M,) int32 label of every used point
    confidence: np.ndarray          # (M,) float32 its probability
    centers: np.ndarray             # (c, 3) float32 token centers
    token_segments: np.ndarray      # (c,) int32 SuperToken id of every token
    embeddings: np.ndarray          # (c, D) float32 output tokens
    tokens_in_encoder: int          # tokens that entered the encoder
    group_idx: np.ndarray           # (c, k) int64 kNN group of every center (indices into the used points)
    nearest: np.ndarray             # (M,) int64 nearest center of every used point
    tokenized_at: float             # time.perf_counter() after tokenization (grouping in graph runs)
    encoded_at: float               # time.perf_counter() after the encoder (graph runs: after the graph)


@dataclass
class PredictorResult:
    """Per-point outputs aligned index by index with the input cloud (N points), plus tokens."""

    labels: np.ndarray              # (N,) int32 class id; -1 for non-finite input points
    confidence: np.ndarray          # (N,) float32 softmax probability of the label; 0 for invalid points
    segments: np.ndarray            # (N,) int32 SuperToken segment id; -1 for invalid points
    centers: np.ndarray             # (T, 3) float32 token centers
    embeddings: np.ndarray          # (T, D) float32 token embeddings (model output tokens)
    token_segments: np.ndarray      # (T,) int32 SuperToken id of every token
    report: FrameReport


@dataclass
class LabelInfo:
    """One entry of the label map a model predicts."""

    id: int
    name: str
    color: tuple[float, float, float, float]   # RGBA in [0, 1]
