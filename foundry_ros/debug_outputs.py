"""RViz debug outputs of the node, built with numpy only (no rclpy; message classes are passed in).

* ``~/debug/segments_rgb``: the segments cloud coloured by label, fields :data:`RGB_FIELDS`
  (``x, y, z`` FLOAT32 at offsets 0, 4, 8; ``rgb`` FLOAT32 at offset 12; 16-byte points), same
  ``height x width`` as the input. ``rgb`` holds the bits of a packed ``0x00RRGGBB`` uint32 (the PCL
  ``PointXYZRGB`` convention). RViz 2's ``RGB8`` colour transformer takes a field named ``rgb`` (or
  ``rgba``) of datatype INT32, UINT32 or FLOAT32 and reads its 4 bytes as a uint32 whatever the
  datatype; the PointCloud2 display selects ``RGB8`` by itself when such a field exists. Colours are
  the label map's (``predictor.label_info()``, see :func:`foundry_ros.label_map.label_rows`); invalid
  points keep NaN xyz (RViz skips them) and, like labels absent from the map, get :data:`INVALID_RGB`.
* ``~/debug/supertokens``: a ``visualization_msgs/MarkerArray`` with one SPHERE_LIST marker, one sphere
  per SuperToken segment at the mean xyz of its points, coloured by segment id (:func:`segment_colours`);
  a frame without segments gives a DELETE of that marker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from foundry_ros.label_map import LabelRow, label_rows

__all__ = ["RGB_FIELDS", "INVALID_RGB", "MARKER_NS", "MARKER_DIAMETER_M", "LabelPalette", "pack_rgb",
           "unpack_rgb", "predictor_palette", "segments_rgb_arrays", "SegmentCentres", "segment_centres",
           "segment_colours", "supertoken_markers"]

#: Fields of ``~/debug/segments_rgb``, in point order.
RGB_FIELDS = ("x", "y", "z", "rgb")
#: Colour (r, g, b in [0, 1]) of invalid points and of labels the label map does not know: grey.
INVALID_RGB = (0.5, 0.5, 0.5)
#: ``Marker.ns`` and diameter (m) of the SuperToken centre spheres.
MARKER_NS = "supertokens"
MARKER_DIAMETER_M = 0.25


def pack_rgb(rgb: Any) -> np.ndarray:
    """(..., 3) colours in [0, 1] -> (...) uint32 ``0x00RRGGBB`` (rounded, clipped)."""
    c = np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_rgb(packed: Any) -> np.ndarray:
    """(...) packed ``0x00RRGGBB`` (uint32, or float32 holding its bits) -> (..., 3) uint8 r, g, b."""
    p = np.asarray(packed)
    if p.dtype == np.float32:
        p = p.view(np.uint32)
    p = p.astype(np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class LabelPalette:
    """Label id -> packed colour. ``ids``: (K,) int64, sorted; ``packed``: (K,) uint32; ``fallback``:
    the packed colour of every other label (invalid points, -1, ids not in the map)."""

    ids: np.ndarray
    packed: np.ndarray
    fallback: int = int(pack_rgb(INVALID_RGB))

    @classmethod
    def from_rows(cls, rows: Iterable[LabelRow]) -> "LabelPalette":
        rows = sorted(rows, key=lambda r: int(r.id))
        ids = np.array([int(r.id) for r in rows], dtype=np.int64)
        packed = pack_rgb(np.array([r.rgba[:3] for r in rows], dtype=np.float64).reshape(-1, 3))
        return cls(ids=ids, packed=packed.astype(np.uint32))

    def colours(self, labels: Any) -> np.ndarray:
        """(N,) label ids -> (N,) uint32 packed colours."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = np.full(labels.shape, self.fallback, dtype=np.uint32)
        if self.ids.size == 0 or labels.size == 0:
            return out
        pos = np.clip(np.searchsorted(self.ids, labels), 0, self.ids.size - 1)
        known = self.ids[pos] == labels
        out[known] = self.packed[pos[known]]
        return out


def predictor_palette(predictor: Any) -> LabelPalette:
    """The palette of ``predictor.label_info()`` (the LabelMap's colours); empty (all grey) when it fails
    (the node logs that failure when it publishes the label map)."""
    try:
        rows, _ = label_rows(list(predictor.label_info()))
    except Exception:
        rows = []
    return LabelPalette.from_rows(rows)


def segments_rgb_arrays(outputs: Mapping[str, Any], palette: LabelPalette) -> dict[str, np.ndarray]:
    """Arrays of :data:`RGB_FIELDS` from the segments cloud's per-point arrays (``x, y, z, label`` of
    :func:`foundry_ros.frame_io.aligned_outputs`, N rows): xyz as is (NaN for invalid points), ``rgb``
    (N,) float32 holding the packed colour of each label; non-finite points are grey whatever their label."""
    x, y, z = (np.asarray(outputs[k], dtype=np.float32).reshape(-1) for k in ("x", "y", "z"))
    packed = palette.colours(outputs["label"])
    packed[~(np.isfinite(x) & np.isfinite(y) & np.isfinite(z))] = palette.fallback
    return {"x": x, "y": y, "z": z, "rgb": packed.view(np.float32)}


@dataclass(frozen=True)
class SegmentCentres:
    """``ids``: (S,) int32 SuperToken ids, sorted; ``xyz``: (S, 3) float32 mean of their points; ``counts``: (S,)."""

    ids: np.ndarray
    xyz: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.size)


def segment_centres(xyz: Any, segments: Any) -> SegmentCentres:
    """Mean xyz of the points of each segment id; points with a negative id or non-finite xyz are left out.

    ``xyz``: (N, 3); ``segments``: (N,) integer ids (e.g. ``result.segments`` with ``decoded.xyz``), or
    None (no prediction: no centre).
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if segments is None:
        pts = pts[:0]
        segments = np.zeros(0, np.int64)
    seg = np.asarray(segments).reshape(-1).astype(np.int64)
    if seg.shape[0] != pts.shape[0]:
        raise ValueError(f"segment_centres: {pts.shape[0]} points but {seg.shape[0]} segment ids")
    keep = (seg >= 0) & np.isfinite(pts).all(axis=1)
    ids, inverse = np.unique(seg[keep], return_inverse=True)
    counts = np.bincount(inverse, minlength=ids.size)
    sums = np.stack([np.bincount(inverse, weights=pts[keep, k], minlength=ids.size) for k in range(3)], axis=1)
    centres = sums / np.maximum(counts, 1)[:, None]
    return SegmentCentres(ids=ids.astype(np.int32), xyz=centres.reshape(-1, 3).astype(np.float32),
                          counts=counts.astype(np.int64))


def segment_colours(ids: Any) -> np.ndarray:
    """(S,) segment ids -> (S, 4) float32 RGBA in [0, 1]: a fixed colour per id (golden-ratio hue steps,
    so neighbouring ids differ), opaque."""
    h = (np.asarray(ids, dtype=np.float64).reshape(-1) * 0.618033988749895) % 1.0
    s, v = 0.65, 0.95
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    vv = np.full_like(h, v)
    pp = np.full_like(h, p)
    r = np.choose(i, [vv, q, pp, pp, t, vv])
    g = np.choose(i, [t, vv, vv, q, pp, pp])
    b = np.choose(i, [pp, pp, t, vv, vv, q])
    return np.stack([r, g, b, np.ones_like(h)], axis=1).astype(np.float32)


def supertoken_markers(types: Any, header: Any, centres: SegmentCentres) -> Any:
    """A ``types.MarkerArray`` with one SPHERE_LIST ``types.Marker`` (ns :data:`MARKER_NS`, id 0, in
    ``header``'s frame) holding the segment centres and their :func:`segment_colours`; a DELETE of that
    marker when there is no centre. ``types`` has ``Marker``, ``MarkerArray``, ``Point``, ``ColorRGBA``."""
    m = types.Marker()
    m.header = header
    m.ns, m.id = MARKER_NS, 0
    if len(centres) == 0:
        m.action = types.Marker.DELETE
        return types.MarkerArray(markers=[m])
    m.type, m.action = types.Marker.SPHERE_LIST, types.Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = MARKER_DIAMETER_M
    m.color.r = m.color.g = m.color.b = m.color.a = 1.0
    m.points = [types.Point(x=float(x), y=float(y), z=float(z)) for x, y, z in centres.xyz.tolist()]
    m.colors = [types.ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b, a in segment_colours(centres.ids).tolist()]
    return types.MarkerArray(markers=[m])
