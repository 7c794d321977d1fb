"""foundry_ros.debug_outputs without rclpy: label colours, invalid points, the RViz layout, segment centres."""
from __future__ import annotations

import types

import numpy as np
import pytest

from foundry_core.runtime.types import LabelInfo
from foundry_ros import debug_outputs as D
from foundry_ros.label_map import LabelRow, label_rows
from foundry_ros.pointcloud2 import encode_pointcloud2_fields

GREY = (128, 128, 128)
INFOS = [LabelInfo(7, "pole", (0.0, 0.0, 1.0, 1.0)), LabelInfo(0, "road", (1.0, 0.0, 0.0, 1.0)),
         LabelInfo(3, "car", (0.2, 0.4, 0.6, 0.5)), LabelInfo(-2, "bad", (0.0, 1.0, 0.0, 1.0))]


def _palette() -> D.LabelPalette:
    rows, warnings = label_rows(INFOS)
    assert len(warnings) == 1  # id -2 is left out of the map, so it must be grey here too
    return D.LabelPalette.from_rows(rows)


def test_pack_and_unpack_rgb():
    assert int(D.pack_rgb((1.0, 0.0, 0.0))) == 0x00FF0000
    assert int(D.pack_rgb((0.0, 1.0, 0.0))) == 0x0000FF00
    assert int(D.pack_rgb((0.0, 0.0, 1.0))) == 0x000000FF
    assert int(D.pack_rgb((0.2, 0.4, 0.6))) == (51 << 16) | (102 << 8) | 153
    assert int(D.pack_rgb((2.0, -1.0, 0.5))) == (255 << 16) | (0 << 8) | 128  # clipped, rounded
    packed = D.pack_rgb([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(D.unpack_rgb(packed), [[51, 102, 153], GREY])
    np.testing.assert_array_equal(D.unpack_rgb(packed.view(np.float32)), [[51, 102, 153], GREY])


def test_colours_are_the_label_maps_and_unknown_labels_grey():
    pal = _palette()
    labels = np.array([0, 3, 7, -1, 5, -2, 1 << 40, 3], np.int64)
    got = D.unpack_rgb(pal.colours(labels))
    expected = [(255, 0, 0), (51, 102, 153), (0, 0, 255), GREY, GREY, GREY, GREY, (51, 102, 153)]
    np.testing.assert_array_equal(got, expected)
    empty = D.LabelPalette.from_rows([])
    np.testing.assert_array_equal(D.unpack_rgb(empty.colours([0, 1])), [GREY, GREY])
    assert empty.colours(np.zeros(0, np.int32)).shape == (0,)


def test_predictor_palette_uses_label_info_and_survives_a_failure():
    good = types.SimpleNamespace(label_info=lambda: INFOS)
    np.testing.assert_array_equal(D.predictor_palette(good).ids, [0, 3, 7])

    def broken():
        raise RuntimeError("no labels")

    assert D.predictor_palette(types.SimpleNamespace(label_info=broken)).ids.size == 0


def test_segments_rgb_arrays_invalid_points_nan_and_grey_in_rviz_layout():
    nan = np.float32(np.nan)
    outputs = {"x": np.array([1, nan, 3, 4], np.float32), "y": np.array([0, nan, 1, 2], np.float32),
               "z": np.array([0, nan, 1, np.inf], np.float32), "label": np.array([0, -1, 7, 3], np.int32),
               "confidence": np.ones(4, np.float32), "segment": np.array([1, -1, 2, 2], np.int32)}
    arrays = D.segments_rgb_arrays(outputs, _palette())
    assert tuple(arrays) == D.RGB_FIELDS
    assert arrays["rgb"].dtype == np.float32
    np.testing.assert_array_equal(D.unpack_rgb(arrays["rgb"]), [(255, 0, 0), GREY, (0, 0, 255), GREY])
    assert np.isnan(arrays["x"][1]) and arrays["x"][2] == 3.0
    # the wire layout RViz's RGB8 transformer reads: rgb FLOAT32 at offset 12, 16-byte points, and the
    # 4 bytes of rgb are the uint32 0x00RRGGBB (the bit pattern survives the float32 packing)
    specs, step, data = encode_pointcloud2_fields(arrays, order=D.RGB_FIELDS)
    assert [(s.name, s.offset, s.datatype, s.count) for s in specs] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]  # 7 = PointField.FLOAT32
    assert step == 16
    raw = np.frombuffer(data, np.dtype([("xyz", "<f4", 3), ("rgb", "<u4")]))
    assert [hex(v) for v in raw["rgb"]] == [hex(0xFF0000), hex(0x808080), hex(0x0000FF), hex(0x808080)]


def test_segment_centres_are_the_mean_of_each_segment():
    xyz = np.array([[0, 0, 0], [2, 0, 0], [10, 10, 10], [np.nan, 0, 0], [5, 5, 5], [1, 1, 1], [4, 2, 0]],
                   np.float32)
    seg = np.array([4, 4, 9, 4, -1, 4, 0], np.int32)
    c = D.segment_centres(xyz, seg)
    np.testing.assert_array_equal(c.ids, [0, 4, 9])
    np.testing.assert_array_equal(c.counts, [1, 3, 1])  # the NaN point and segment -1 are left out
    np.testing.assert_allclose(c.xyz, [[4, 2, 0], [1, 1 / 3, 1 / 3], [10, 10, 10]], rtol=1e-6)
    assert c.xyz.dtype == np.float32 and len(c) == 3
    assert len(D.segment_centres(np.zeros((0, 3)), np.zeros(0, np.int32))) == 0
    assert len(D.segment_centres(np.ones((5, 3)), None)) == 0
    with pytest.raises(ValueError, match="5 points but 4 segment ids"):
        D.segment_centres(np.ones((5, 3)), np.zeros(4))


def test_segment_colours_fixed_distinct_and_opaque():
    ids = np.arange(64)
    c = D.segment_colours(ids)
    assert c.shape == (64, 4) and c.dtype == np.float32
    assert ((c >= 0) & (c <= 1)).all() and (c[:, 3] == 1).all()
    np.testing.assert_array_equal(D.segment_colours([5, 17]), c[[5, 17]])  # by id, not by position
    assert len({tuple(np.rint(row[:3] * 255).astype(int)) for row in c}) == 64
    assert np.abs(c[1:, :3] - c[:-1, :3]).max(axis=1).min() > 0.1  # neighbouring ids stand apart


def _marker_types():
    vm = pytest.importorskip("visualization_msgs.msg", reason="ROS 2 wheels not installed")
    gm = pytest.importorskip("geometry_msgs.msg")
    sm = pytest.importorskip("std_msgs.msg")
    return types.SimpleNamespace(Marker=vm.Marker, MarkerArray=vm.MarkerArray, Point=gm.Point,
                                 ColorRGBA=sm.ColorRGBA), sm.Header


def test_supertoken_markers_one_sphere_list_coloured_by_segment():
    M, Header = _marker_types()
    header = Header(frame_id="lidar")
    centres = D.segment_centres(np.array([[0, 0, 0], [2, 0, 0], [1, 5, 1]], np.float32), [3, 3, 8])
    arr = D.supertoken_markers(M, header, centres)
    [m] = arr.markers
    assert (m.type, m.action, m.ns, m.id) == (M.Marker.SPHERE_LIST, M.Marker.ADD, D.MARKER_NS, 0)
    assert m.header.frame_id == "lidar" and m.pose.orientation.w == 1.0 and m.scale.x == D.MARKER_DIAMETER_M
    assert [(p.x, p.y, p.z) for p in m.points] == [(1.0, 0.0, 0.0), (1.0, 5.0, 1.0)]
    colours = D.segment_colours([3, 8])
    assert [(c.r, c.g, c.b, c.a) for c in m.colors] == pytest.approx([tuple(c) for c in colours.tolist()])
    [gone] = D.supertoken_markers(M, header, D.segment_centres(np.zeros((0, 3)), [])).markers
    assert (gone.action, gone.ns, gone.id, len(gone.points)) == (M.Marker.DELETE, D.MARKER_NS, 0, 0)


def test_label_row_colours_padded_to_rgba_keep_their_rgb():
    pal = D.LabelPalette.from_rows([LabelRow(2, "x", (0.0, 1.0, 1.0, 1.0))])
    np.testing.assert_array_equal(D.unpack_rgb(pal.colours([2])), [(0, 255, 255)])
