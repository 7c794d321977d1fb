"""foundry_ros.frame_io: model input from a decoded cloud and outputs back on its grid (no ROS)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from foundry_ros.frame_io import SEGMENT_FIELDS, aligned_outputs, check_result, model_input, output_header
from foundry_ros.pointcloud2 import DecodedCloud

NAN = float("nan")


def decoded_2x3() -> DecodedCloud:
    """A 2 x 3 organised cloud whose grid cells 1 and 4 were invalid (4 finite points)."""
    xyz = np.array([[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], np.float32)
    extra = {"intensity": np.array([10, 20, 30, 40], np.float32),
             "rgb": np.arange(8, dtype=np.float32).reshape(4, 2)}
    return DecodedCloud(xyz=xyz, extra=extra, index=np.array([0, 2, 3, 5]), height=2, width=3, num_input=6,
                        num_dropped=2)


def test_model_input_columns_and_missing_fields():
    d = decoded_2x3()
    pts, missing = model_input(d, [])
    assert pts.shape == (4, 3) and pts.dtype == np.float32 and missing == []
    pts, missing = model_input(d, ["intensity", "rgb", "ring"])
    assert pts.shape == (4, 3 + 1 + 2 + 1) and missing == ["ring"]
    np.testing.assert_array_equal(pts[:, 3], [10, 20, 30, 40])
    np.testing.assert_array_equal(pts[:, 4:6], d.extra["rgb"])
    assert (pts[:, 6] == 0).all() and pts.flags.c_contiguous


def test_aligned_outputs_scatter_onto_the_input_grid():
    d = decoded_2x3()
    result = SimpleNamespace(labels=np.array([0, 1, 2, 3]), confidence=np.array([0.5, 0.6, 0.7, 0.8]),
                             segments=np.array([7, 7, 8, 8]))
    out = aligned_outputs(d, result)
    assert list(out) == list(SEGMENT_FIELDS) and all(len(v) == 6 for v in out.values())
    np.testing.assert_array_equal(out["label"], [0, -1, 1, 2, -1, 3])
    np.testing.assert_array_equal(out["segment"], [7, -1, 7, 8, -1, 8])
    np.testing.assert_allclose(out["confidence"], [0.5, 0, 0.6, 0.7, 0, 0.8])
    np.testing.assert_array_equal(out["x"], [1, NAN, 2, 3, NAN, 4])
    assert out["label"].dtype == np.int32 and out["confidence"].dtype == np.float32


def test_aligned_outputs_without_a_prediction():
    out = aligned_outputs(decoded_2x3())
    assert (out["label"] == -1).all() and (out["segment"] == -1).all() and (out["confidence"] == 0).all()
    assert np.isfinite(out["x"]).sum() == 4


def test_check_result():
    good = SimpleNamespace(labels=np.zeros(4), confidence=np.zeros(4), segments=np.zeros(4), report=object())
    check_result(good, 4)
    with pytest.raises(ValueError, match=r"labels has shape \(3,\), expected \(4,\)"):
        check_result(SimpleNamespace(**{**vars(good), "labels": np.zeros(3)}), 4)
    with pytest.raises(ValueError, match="no report"):
        check_result(SimpleNamespace(**{**vars(good), "report": None}), 4)


def test_output_header():
    class Header(SimpleNamespace):
        pass

    h = Header(stamp=5, frame_id="lidar")
    assert output_header(h, "") is h
    other = output_header(h, "base_link")
    assert (type(other), other.stamp, other.frame_id, h.frame_id) == (Header, 5, "base_link", "lidar")
