"""Sample foundry_msgs messages with known contents (for round trips, pub/sub and bag tests)."""
from __future__ import annotations

import numpy as np
from foundry_msgs.msg import InferenceReport, LabelEntry, LabelMap, TokenEmbeddings
from std_msgs.msg import ColorRGBA, Header


def sample_report(frame: int) -> InferenceReport:
    """An InferenceReport of frame ``frame`` (every field set)."""
    return InferenceReport(
        header=Header(frame_id="lidar"), tokens_in_encoder=96 + frame, token_budget=128, num_centers=128,
        fusion_ratio=0.75, fusion_threshold=0.5, backend="torch-cpu", precision="fp32", model_hash="abc123",
        points_in=100_000, points_used=8192, points_dropped=91_808, points_unlabelled=1_000, latency_ms=41.5,
        deadline_ms=50.0, preprocess_ms=3.0, tokenize_ms=11.0, encode_ms=20.0, head_ms=5.0,
        publish_ms=2.5, frame_index=frame, frames_dropped_stale=1)


def sample_label_map() -> LabelMap:
    """Four labels with ids 0, 2, 4, 6."""
    names = ["floor", "wall", "chair", "table"]
    return LabelMap(model_hash="abc123", entries=[
        LabelEntry(id=i * 2, name=n, color=ColorRGBA(r=i / 4, g=0.5, b=1 - i / 4, a=1.0))
        for i, n in enumerate(names)])


def sample_embeddings(n: int, d: int, seed: int = 0) -> TokenEmbeddings:
    """``n`` random tokens of dimension ``d``."""
    rng = np.random.default_rng(seed)
    m = TokenEmbeddings(header=Header(frame_id="lidar"), num_tokens=n, embedding_dim=d, model_hash="abc123")
    m.centers_xyz = rng.standard_normal(n * 3).astype(np.float32)
    m.features = rng.standard_normal(n * d).astype(np.float32)
    m.segment_of_token = rng.integers(-1, n // 4, n).astype(np.int32)
    return m
