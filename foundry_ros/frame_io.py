"""Between a decoded PointCloud2 and the predictor: model input, result check, outputs on the input grid."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from foundry_ros.pointcloud2 import DecodedCloud, scatter_to_grid

__all__ = ["SEGMENT_FIELDS", "model_input", "check_result", "aligned_outputs", "output_header"]

#: Fields of ``foundry/segments``, in point order.
SEGMENT_FIELDS = ("x", "y", "z", "label", "confidence", "segment")


def model_input(decoded: DecodedCloud, extra_fields: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(N, 3 + F) float32 predictor input (xyz then ``extra_fields`` in order) and missing fields.

    A requested field the cloud lacks is filled with zeros (the model still gets its channel
    count); fields with ``count > 1`` contribute ``count`` columns.
    """
    n = decoded.num_points
    cols = [decoded.xyz]
    missing = []
    for name in extra_fields:
        arr = decoded.extra.get(name)
        if arr is None:
            missing.append(name)
            cols.append(np.zeros((n, 1), np.float32))
        else:
            arr = np.asarray(arr, dtype=np.float32)
            cols.append(arr[:, None] if arr.ndim == 1 else arr.reshape(n, int(np.prod(arr.shape[1:]))))
    if len(cols) == 1:
        return np.ascontiguousarray(decoded.xyz, dtype=np.float32), missing
    return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32), missing


def check_result(result: Any, n: int) -> None:
    """ValueError unless ``result`` has (n,) labels / confidence / segments and a report."""
    for name in ("labels", "confidence", "segments"):
        arr = getattr(result, name, None)
        if arr is None or np.shape(arr)[:1] != (n,):
            raise ValueError(f"predictor result {name} has shape {np.shape(arr)}, expected ({n},)")
    if getattr(result, "report", None) is None:
        raise ValueError("predictor result has no report")


def aligned_outputs(decoded: DecodedCloud, result: Any | None = None) -> dict[str, np.ndarray]:
    """Per-input-point arrays (``num_input`` rows, row-major grid order) of :data:`SEGMENT_FIELDS`.

    ``result`` (labels / confidence / segments aligned with ``decoded.xyz``, the finite points);
    None means "no prediction". Points without one get label -1, confidence 0, segment -1, and
    invalid input points keep NaN coordinates.
    """
    n_in, idx, n = decoded.num_input, decoded.index, decoded.num_points
    labels = np.full(n, -1, np.int32) if result is None else result.labels
    confidence = np.zeros(n, np.float32) if result is None else result.confidence
    segments = np.full(n, -1, np.int32) if result is None else result.segments
    if n == n_in and decoded.num_dropped == 0:     # every input point is finite: already in grid order
        xyz = np.asarray(decoded.xyz, dtype=np.float32)
        return {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                "label": np.asarray(labels).astype(np.int32, copy=False),
                "confidence": np.asarray(confidence).astype(np.float32, copy=False),
                "segment": np.asarray(segments).astype(np.int32, copy=False)}
    xyz = scatter_to_grid(decoded.xyz, idx, n_in, np.nan, np.float32)
    return {
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "label": scatter_to_grid(np.asarray(labels).astype(np.int32, copy=False), idx, n_in, -1, np.int32),
        "confidence": scatter_to_grid(np.asarray(confidence).astype(np.float32, copy=False), idx, n_in, 0.0,
                                      np.float32),
        "segment": scatter_to_grid(np.asarray(segments).astype(np.int32, copy=False), idx, n_in, -1, np.int32),
    }


def output_header(header: Any, frame_id_override: str) -> Any:
    """The input's header, or a copy with ``frame_id_override`` as frame when that is non-empty."""
    if not frame_id_override:
        return header
    return type(header)(stamp=header.stamp, frame_id=frame_id_override)
