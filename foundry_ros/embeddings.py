"""TokenEmbeddings field values of a predictor result (pure)."""
from __future__ import annotations

from typing import Any

import numpy as np

from foundry_ros.msg_values import u32

__all__ = ["embeddings_fields"]


def embeddings_fields(result: Any, model_hash: str) -> dict[str, Any]:
    """foundry_msgs/TokenEmbeddings fields (all but ``header``): tokens, centers, features, segments."""
    emb = np.asarray(result.embeddings, dtype=np.float32)
    emb = emb.reshape(emb.shape[0], -1) if emb.ndim != 2 else emb
    centers = np.asarray(result.centers, dtype=np.float32).reshape(-1, 3)
    seg = np.asarray(result.token_segments, dtype=np.int32).reshape(-1)
    return {"num_tokens": u32(emb.shape[0]), "embedding_dim": u32(emb.shape[1] if emb.ndim == 2 else 0),
            "centers_xyz": np.ascontiguousarray(centers).ravel(), "features": np.ascontiguousarray(emb).ravel(),
            "segment_of_token": np.ascontiguousarray(seg), "model_hash": model_hash}
