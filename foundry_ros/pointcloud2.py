"""PointCloud2 decoding and encoding in pure numpy (no rclpy / sensor_msgs needed).

The message is duck-typed: anything with the attributes of ``sensor_msgs/msg/PointCloud2``
(``height, width, fields, is_bigendian, point_step, row_step, data``) works, and each field
only needs ``name, offset, datatype, count`` like ``sensor_msgs/msg/PointField`` (a
:class:`FieldSpec` tuple works too).

Decoding builds one structured numpy dtype with an explicit byte order, explicit offsets and
``itemsize == point_step`` (so padding between fields and after the last field is skipped), and
views the byte buffer as a ``height x width`` array with strides ``(row_step, point_step)`` (so
row padding is skipped).  No per-point Python loop and no copy of the raw buffer is made; only
the requested fields are converted.

Validation policy: every field descriptor of the message is checked (known datatype, inside
``point_step``), since a malformed descriptor means the message cannot be trusted.  Duplicate
field names are tolerated unless the duplicated name is one that was requested (old PCL
versions emitted several ``"_"`` padding fields).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "INT8",
    "UINT8",
    "INT16",
    "UINT16",
    "INT32",
    "UINT32",
    "FLOAT32",
    "FLOAT64",
    "DATATYPE_TO_DTYPE",
    "PointCloud2Error",
    "FieldSpec",
    "DecodedCloud",
    "pointcloud2_dtype",
    "decode_pointcloud2",
    "encode_pointcloud2_fields",
    "make_pointcloud2",
    "scatter_to_grid",
]

# sensor_msgs/msg/PointField datatype constants.
INT8 = 1
UINT8 = 2
INT16 = 3
UINT16 = 4
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8

#: PointField datatype -> numpy type code (byte order is added from ``is_bigendian``).
DATATYPE_TO_DTYPE: dict[int, str] = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
_DTYPE_TO_DATATYPE: dict[str, int] = {v: k for k, v in DATATYPE_TO_DTYPE.items()}
_DATATYPE_NAMES = {
    INT8: "INT8",
    UINT8: "UINT8",
    INT16: "INT16",
    UINT16: "UINT16",
    INT32: "INT32",
    UINT32: "UINT32",
    FLOAT32: "FLOAT32",
    FLOAT64: "FLOAT64",
}

DEFAULT_MAX_POINTS = 20_000_000


class PointCloud2Error(ValueError):
    """A PointCloud2 message (or data to encode) is malformed or cannot be represented."""


class FieldSpec(NamedTuple):
    """One field of a PointCloud2 layout; usable wherever a ``PointField`` is expected."""

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclasses.dataclass(eq=False)
class DecodedCloud:
    """Result of :func:`decode_pointcloud2`.

    ``xyz`` holds only the finite points; ``index[i]`` is the flat (row-major) position of
    ``xyz[i]`` in the original ``height x width`` grid, so per-point results can be put back
    with :func:`scatter_to_grid`.
    """

    xyz: np.ndarray  # (N, 3) float32, native byte order, all finite
    extra: dict[str, np.ndarray]  # name -> (N,) or (N, count), native byte order
    index: np.ndarray  # (N,) int64 into the height*width grid
    height: int
    width: int
    num_input: int  # height * width
    num_dropped: int  # points with a non-finite x, y or z
    integer_xyz: bool = False  # x, y, z are integer fields (taken as metres unchanged)

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def is_organized(self) -> bool:
        return self.height > 1


# --------------------------------------------------------------------------------------------
# helpers


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise PointCloud2Error(f"{what} must be an integer, got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError, OverflowError):
        raise PointCloud2Error(f"{what} must be an integer, got {value!r}") from None
    if as_int != value:
        raise PointCloud2Error(f"{what} must be an integer, got {value!r}")
    if as_int < 0:
        raise PointCloud2Error(f"{what} must be >= 0, got {as_int}")
    return as_int


def _field_tuple(field: Any, i: int) -> tuple[Any, Any, Any, Any]:
    if isinstance(field, tuple) and not hasattr(field, "name"):
        if len(field) == 4:
            return field  # plain (name, offset, datatype, count)
        raise PointCloud2Error(f"fields[{i}]: a tuple field needs (name, offset, datatype, count)")
    try:
        return field.name, field.offset, field.datatype, field.count
    except AttributeError as e:
        raise PointCloud2Error(
            f"fields[{i}]: expected an object with name/offset/datatype/count ({e})"
        ) from None


class _Field(NamedTuple):
    offset: int
    code: str  # numpy type code without byte order, e.g. "f4"
    count: int
    datatype: int


def _parse_fields(
    fields: Iterable[Any], point_step: int, wanted: Sequence[str], strict: bool = True
) -> dict[str, _Field]:
    """Validate field descriptors; return name -> _Field (first occurrence of each name).

    With ``strict=False`` malformed descriptors are skipped instead of raising (used only for
    empty clouds, which are never an error).
    """
    out: dict[str, _Field] = {}
    duplicated: set[str] = set()
    for i, f in enumerate(fields or ()):
        try:
            name, offset, datatype, count = _field_tuple(f, i)
            if not isinstance(name, str):
                raise PointCloud2Error(f"fields[{i}]: name must be a string, got {name!r}")
            offset = _as_int(offset, f"field {name!r} offset")
            count = _as_int(count, f"field {name!r} count")
            if isinstance(datatype, (bool, np.bool_)) or datatype not in DATATYPE_TO_DTYPE:
                raise PointCloud2Error(
                    f"field {name!r} has unknown datatype {datatype!r} "
                    f"(expected 1..8: INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64)"
                )
            datatype = int(datatype)
            # count == 0 is emitted by some drivers for scalar fields; treat it as 1.
            count = max(count, 1)
            code = DATATYPE_TO_DTYPE[datatype]
            size = int(code[1]) * count
            if strict and offset + size > point_step:
                raise PointCloud2Error(
                    f"field {name!r} (offset {offset}, {count} x {_DATATYPE_NAMES[datatype]}, "
                    f"{size} bytes) extends past point_step {point_step}"
                )
        except PointCloud2Error:
            if strict:
                raise
            continue
        if name in out:
            duplicated.add(name)
            continue
        out[name] = _Field(offset, code, count, datatype)
    bad = sorted(duplicated.intersection(wanted))
    if bad and strict:
        raise PointCloud2Error(f"duplicate field name(s) {bad} in PointCloud2 fields")
    return out


def _struct_dtype(layout: Mapping[str, _Field], names: Sequence[str], byteorder: str,
                  itemsize: int) -> np.dtype:
    formats = []
    for n in names:
        f = layout[n]
        base = np.dtype(byteorder + f.code)
        formats.append(np.dtype((base, (f.count,))) if f.count > 1 else base)
    return np.dtype(
        {
            "names": list(names),
            "formats": formats,
            "offsets": [layout[n].offset for n in names],
            "itemsize": itemsize,
        }
    )


def pointcloud2_dtype(
    fields: Iterable[Any],
    point_step: int,
    is_bigendian: bool = False,
    names: Sequence[str] | None = None,
) -> np.dtype:
    """Structured dtype (explicit byte order, offsets, ``itemsize == point_step``) for ``fields``.

    ``names`` selects a subset (in that order); by default every field is included.  Raises
    :class:`PointCloud2Error` for malformed descriptors or a requested name that is missing.
    """
    point_step = _as_int(point_step, "point_step")
    layout = _parse_fields(fields, point_step, wanted=names if names is not None else ())
    if names is None:
        names = list(layout)
    missing = [n for n in names if n not in layout]
    if missing:
        raise PointCloud2Error(f"field(s) {missing} not in PointCloud2 fields {list(layout)}")
    return _struct_dtype(layout, list(names), ">" if is_bigendian else "<", point_step)


def _as_byte_array(data: Any) -> np.ndarray:
    """1-D uint8 view (no copy where possible) of bytes/bytearray/memoryview/array('B')/list."""
    if data is None:
        return np.empty(0, dtype=np.uint8)
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise PointCloud2Error(f"data is not a sequence of bytes ({e})") from None
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        pass
    try:  # e.g. a non-contiguous memoryview or ndarray
        arr = np.ascontiguousarray(np.asarray(data))
        if arr.dtype.kind in "OUS" or arr.dtype.hasobject:
            raise TypeError(f"unsupported element type {arr.dtype}")
        return arr.reshape(-1).view(np.uint8)
    except (TypeError, ValueError, BufferError) as e:
        raise PointCloud2Error(
            f"data must be bytes, bytearray, memoryview or array('B'), got {type(data).__name__} ({e})"
        ) from None


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


# --------------------------------------------------------------------------------------------
# decoding


def _empty_result(msg: Any, height: int, width: int, extra: Sequence[str],
                  point_step: int) -> DecodedCloud:
    layout = _parse_fields(getattr(msg, "fields", ()) or (), point_step, wanted=(), strict=False)
    extras: dict[str, np.ndarray] = {}
    for name in extra:
        f = layout.get(name)
        if f is not None:
            shape = (0, f.count) if f.count > 1 else (0,)
            extras[name] = np.empty(shape, dtype=np.dtype(f.code))
    return DecodedCloud(
        xyz=np.empty((0, 3), dtype=np.float32),
        extra=extras,
        index=np.empty(0, dtype=np.int64),
        height=height,
        width=width,
        num_input=0,
        num_dropped=0,
    )


def decode_pointcloud2(
    msg: Any,
    fields: Sequence[str] = ("x", "y", "z"),
    extra: Sequence[str] = (),
    max_points: int = DEFAULT_MAX_POINTS,
) -> DecodedCloud:
    """Decode a PointCloud2-like message into finite float32 xyz plus requested extra fields.

    Args:
        msg: object with ``height, width, fields, is_bigendian, point_step, row_step, data``.
        fields: names of the three coordinate fields (normally ``("x", "y", "z")``); they may be
            of any numeric datatype and are converted to float32.
        extra: further field names to return (e.g. ``("intensity", "ring")``); names that the
            message does not have are silently skipped.  Values keep their numeric type (native
            byte order); fields with ``count > 1`` come back as ``(N, count)``.
        max_points: sanity bound on ``height * width`` (protects against corrupt headers).

    Points whose x, y or z is NaN or +-inf (also float64 values beyond the float32 range) are
    dropped; :attr:`DecodedCloud.index` maps kept points back to the ``height * width`` grid.

    Raises:
        PointCloud2Error: missing coordinate field, unknown datatype, field past ``point_step``,
            ``point_step == 0``, ``row_step < width * point_step``, truncated ``data``, or
            ``height * width > max_points``.  An empty cloud is not an error.
    """
    fields = tuple(fields)
    if len(fields) != 3 or not all(isinstance(n, str) for n in fields):
        raise PointCloud2Error(f"fields must name exactly three coordinate fields, got {fields!r}")
    if isinstance(extra, str):
        extra = (extra,)
    extra = tuple(dict.fromkeys(extra))  # de-duplicate, keep order

    try:
        height = _as_int(msg.height, "height")
        width = _as_int(msg.width, "width")
        point_step = _as_int(msg.point_step, "point_step")
        row_step = _as_int(msg.row_step, "row_step")
        is_bigendian = bool(msg.is_bigendian)
        msg_fields = msg.fields
        raw = msg.data
    except AttributeError as e:
        raise PointCloud2Error(f"not a PointCloud2-like message: {e}") from None

    num_input = height * width
    if num_input > max_points:
        raise PointCloud2Error(
            f"cloud of {height} x {width} = {num_input} points exceeds max_points={max_points} "
            f"(corrupt header?)"
        )
    if num_input == 0:
        if len(_as_byte_array(getattr(msg, "data", b""))):
            raise PointCloud2Error(f"cloud of {height} x {width} = 0 points carries data bytes (corrupt header?)")
        return _empty_result(msg, height, width, extra, point_step)

    if point_step == 0:
        raise PointCloud2Error(f"point_step is 0 but the cloud has {num_input} points")
    layout = _parse_fields(msg_fields, point_step, wanted=fields + extra)
    missing = [n for n in fields if n not in layout]
    if missing:
        raise PointCloud2Error(
            f"PointCloud2 has no coordinate field(s) {missing}; fields are {list(layout)}"
        )
    for n in fields:
        if layout[n].count != 1:
            raise PointCloud2Error(f"coordinate field {n!r} has count {layout[n].count}, expected 1")
    if row_step < width * point_step:
        raise PointCloud2Error(
            f"row_step {row_step} < width * point_step = {width} * {point_step} = {width * point_step}"
        )
    buf = _as_byte_array(raw)
    needed = height * row_step
    if buf.size != needed:
        what = "truncated" if buf.size < needed else "longer than its header says"
        raise PointCloud2Error(
            f"data is {what}: {buf.size} bytes, expected height * row_step = "
            f"{height} * {row_step} = {needed} (point_step {point_step}, width {width}); "
            "a header that contradicts the data cannot be decoded safely"
        )

    present_extra = [n for n in extra if n in layout]
    names = list(dict.fromkeys(fields + tuple(present_extra)))
    dtype = _struct_dtype(layout, names, ">" if is_bigendian else "<", point_step)
    # (height, width) view straight onto the bytes: row padding and point padding are skipped
    # by the strides, the structured dtype skips padding between fields.
    grid = np.ndarray(
        shape=(height, width), dtype=dtype, buffer=buf, offset=0, strides=(row_step, point_step)
    )

    xyz_grid = np.empty((height, width, 3), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, n in enumerate(fields):
            xyz_grid[..., i] = grid[n]
    xyz_all = xyz_grid.reshape(num_input, 3)
    # Column-wise test: a reduction over the short last axis (``.all(axis=1)``) is ~50x slower.
    finite = np.isfinite(xyz_all[:, 0])
    finite &= np.isfinite(xyz_all[:, 1])
    finite &= np.isfinite(xyz_all[:, 2])
    if finite.all():
        index = np.arange(num_input, dtype=np.int64)
        xyz = xyz_all
        keep = None
    else:
        index = np.flatnonzero(finite).astype(np.int64, copy=False)
        xyz = xyz_all.take(index, axis=0)  # faster than fancy indexing for 2-D
        keep = index

    extras: dict[str, np.ndarray] = {}
    for n in present_extra:
        src = grid[n]  # (height, width) or (height, width, count), file byte order
        dst = np.empty(src.shape, dtype=_native(src.dtype))
        dst[...] = src
        dst = dst.reshape((num_input,) + src.shape[2:])
        extras[n] = dst if keep is None else dst.take(keep, axis=0)

    return DecodedCloud(
        xyz=xyz,
        extra=extras,
        index=index,
        height=height,
        width=width,
        num_input=num_input,
        num_dropped=int(num_input - index.size),
        integer_xyz=any(layout[n].code[0] in "iu" for n in fields),
    )


# --------------------------------------------------------------------------------------------
# encoding


def _encodable(name: str, arr: np.ndarray) -> np.ndarray:
    """Cast to a dtype PointField can describe (64-bit ints are narrowed after a range check)."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "b":
        return arr.astype(np.uint8)
    if kind == "f":
        if size == 2:
            return arr.astype(np.float32)
        if size in (4, 8):
            return arr
    if kind in "iu":
        if size <= 4:
            return arr
        target = np.dtype(np.int32 if kind == "i" else np.uint32)
        if arr.size:
            info = np.iinfo(target)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise PointCloud2Error(
                    f"array {name!r} ({arr.dtype}) has values in [{lo}, {hi}] that do not fit "
                    f"{target}; PointCloud2 has no 64-bit integer datatype"
                )
        return arr.astype(target)
    raise PointCloud2Error(f"array {name!r} has dtype {arr.dtype}, which PointCloud2 cannot hold")


def encode_pointcloud2_fields(
    arrays: Mapping[str, Any],
    order: Sequence[str] | None = None,
    dtypes: Mapping[str, Any] | None = None,
) -> tuple[list[FieldSpec], int, bytes]:
    """Pack per-point arrays into a little-endian PointCloud2 point buffer.

    Args:
        arrays: name -> array of shape ``(N,)`` or ``(N, count)`` (all with the same ``N``),
            e.g. ``x, y, z`` float32, ``label`` uint32/int32, ``confidence`` float32,
            ``segment`` int32.
        order: field order in the point (default: the mapping's order); must name exactly the
            keys of ``arrays``.
        dtypes: optional name -> dtype to cast to before packing.  Without it, bool becomes
            UINT8, float16 FLOAT32, and int64/uint64 are narrowed to INT32/UINT32 when the
            values fit (otherwise an error).

    Each field is aligned to its element size and ``point_step`` is rounded up to the largest
    alignment, so ``x, y, z, label, confidence, segment`` gives 24-byte points with no padding.

    Returns:
        ``(fields, point_step, data)``: a list of :class:`FieldSpec` ``(name, offset, datatype,
        count)``, the point size in bytes and the packed bytes (``N * point_step`` long, so
        ``row_step = width * point_step`` with ``is_bigendian = False``).
    """
    names = list(arrays) if order is None else list(order)
    if len(set(names)) != len(names):
        raise PointCloud2Error(f"duplicate names in order {names}")
    unknown = [n for n in names if n not in arrays]
    unused = [n for n in arrays if n not in names]
    if unknown or unused:
        raise PointCloud2Error(
            f"order must list exactly the arrays' names: missing arrays {unknown}, "
            f"arrays not in order {unused}"
        )
    if not names:
        raise PointCloud2Error("nothing to encode: no arrays given")

    cols: list[np.ndarray] = []
    n_points: int | None = None
    for name in names:
        if not isinstance(name, str) or not name:
            raise PointCloud2Error(f"field names must be non-empty strings, got {name!r}")
        arr = np.asarray(arrays[name])
        if dtypes is not None and name in dtypes:
            arr = arr.astype(np.dtype(dtypes[name]))
        if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] < 1):
            raise PointCloud2Error(f"array {name!r} must have shape (N,) or (N, count), got {arr.shape}")
        if n_points is None:
            n_points = arr.shape[0]
        elif arr.shape[0] != n_points:
            raise PointCloud2Error(
                f"array {name!r} has {arr.shape[0]} points, expected {n_points} like {names[0]!r}"
            )
        cols.append(_encodable(name, arr))
    assert n_points is not None

    specs: list[FieldSpec] = []
    formats: list[np.dtype] = []
    offsets: list[int] = []
    offset = 0
    max_align = 1
    for name, arr in zip(names, cols):
        base = np.dtype(arr.dtype).newbyteorder("<")
        size = base.itemsize
        count = arr.shape[1] if arr.ndim == 2 else 1
        offset = -(-offset // size) * size  # align to the element size
        max_align = max(max_align, size)
        specs.append(FieldSpec(name, offset, _DTYPE_TO_DATATYPE[base.str[1:]], count))
        formats.append(np.dtype((base, (count,))) if arr.ndim == 2 else base)
        offsets.append(offset)
        offset += size * count
    point_step = -(-offset // max_align) * max_align

    packed = np.zeros(
        n_points,
        dtype=np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step}
        ),
    )
    for name, arr in zip(names, cols):
        packed[name] = arr
    return specs, point_step, packed.tobytes()


def make_pointcloud2(
    cloud_cls: Any,
    field_cls: Any,
    arrays: Mapping[str, Any],
    *,
    height: int,
    width: int,
    order: Sequence[str] | None = None,
    header: Any = None,
    is_dense: bool = True,
) -> Any:
    """A ``cloud_cls`` message (e.g. ``sensor_msgs/msg/PointCloud2``) holding ``arrays``.

    The points are packed by :func:`encode_pointcloud2_fields` (little-endian, no row padding)
    and ``field_cls`` (e.g. ``PointField``) describes each field; ``height * width`` must equal
    the number of points. ``header`` (if given) is set as is.
    """
    specs, point_step, data = encode_pointcloud2_fields(arrays, order=order)
    height, width = _as_int(height, "height"), _as_int(width, "width")
    if len(data) != height * width * point_step:
        raise PointCloud2Error(
            f"height x width = {height} x {width} does not match {len(data) // point_step} points"
        )
    msg = cloud_cls()
    if header is not None:
        msg.header = header
    msg.height, msg.width = height, width
    msg.fields = [field_cls(name=s.name, offset=s.offset, datatype=s.datatype, count=s.count) for s in specs]
    msg.is_bigendian = False
    msg.point_step = int(point_step)
    msg.row_step = int(point_step * width)
    msg.data = data
    msg.is_dense = bool(is_dense)
    return msg


def scatter_to_grid(
    values: Any, index: Any, num_input: int, fill: Any, dtype: Any = None
) -> np.ndarray:
    """Put per-kept-point ``values`` back on the full ``num_input`` grid.

    ``out[index[i]] = values[i]``; grid cells without a kept point get ``fill`` (e.g. NaN for
    xyz, 0 for labels/confidence, -1 for segment ids).  ``values`` may be ``(N,)`` or
    ``(N, k)``; the result is ``(num_input,)`` or ``(num_input, k)`` of ``dtype`` (default
    ``values.dtype``).  Reshape to ``(height, width[, k])`` for organised clouds.
    """
    values = np.asarray(values)
    index = np.asarray(index)
    num_input = _as_int(num_input, "num_input")
    if index.ndim != 1:
        raise ValueError(f"index must be 1-D, got shape {index.shape}")
    if index.size and index.dtype.kind not in "iu":
        raise ValueError(f"index must be integer, got {index.dtype}")
    if values.ndim == 0 or values.shape[0] != index.shape[0]:
        raise ValueError(
            f"values (shape {values.shape}) and index (shape {index.shape}) must have the same length"
        )
    if index.size and (index.min() < 0 or index.max() >= num_input):
        raise ValueError(f"index values must lie in [0, {num_input}), got [{index.min()}, {index.max()}]")
    out_dtype = np.dtype(dtype) if dtype is not None else values.dtype
    if out_dtype.kind in "iub" and isinstance(fill, float) and not math.isfinite(fill):
        raise ValueError(f"fill {fill!r} cannot be stored in an integer array ({out_dtype})")
    out = np.full((num_input,) + values.shape[1:], fill, dtype=out_dtype)
    out[index] = values
    return out
