"""Readers for single point-cloud files: .npy, .npz, .ply (ascii/binary), .pcd (pypcd4), .txt/.xyz/.pts.

Every reader returns an (N, C) float32 array with x, y, z in the first three columns and raises
ValueError (or an I/O error) on malformed input; loaders turn those into DatasetFormatError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

POINT_SUFFIXES = (".npy", ".npz", ".ply", ".pcd", ".txt", ".xyz", ".pts")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_ENDIAN = {"binary_little_endian": "<", "binary_big_endian": ">"}
_RGB_FIELDS = ("rgb", "rgba")


def xyz_first(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Stack named 1-D columns into (N, C) float32 with x, y, z first (others keep their order)."""
    if not all(k in columns for k in "xyz"):
        raise ValueError(f"point fields x, y, z required, found {list(columns)}")
    names = ["x", "y", "z"] + [k for k in columns if k not in ("x", "y", "z")]
    return np.stack([np.asarray(columns[k], dtype=np.float32) for k in names], axis=1)


def unpack_rgb(values: np.ndarray) -> np.ndarray:
    """PCL packed colour (uint32, or float32 holding the same bits) -> (N, 3) float32 r, g, b in [0, 1]."""
    v = np.ascontiguousarray(values)
    v = v.view(np.uint32) if v.dtype.itemsize == 4 and v.dtype.kind == "f" else v.astype(np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=1)
    return rgb.astype(np.float32) / 255.0


def read_pcd_raw(path: Path) -> tuple[np.ndarray, int, int]:
    """PCD via pypcd4 (ascii, binary, binary_compressed) -> (structured (N,) array, width, height)."""
    from pydantic import ValidationError
    from pypcd4 import PointCloud

    try:
        pc = PointCloud.from_path(path)
    except ValidationError as exc:
        bad = sorted({str(err["loc"][0]) for err in exc.errors() if err.get("loc")})
        raise ValueError(f"malformed PCD header (missing or invalid: {', '.join(bad)})") from None
    data, md = pc.pc_data, pc.metadata
    if len(data) != md.points or md.width * md.height != md.points:
        raise ValueError(f"header says {md.points} points ({md.width}x{md.height}) "
                         f"but {len(data)} were decoded (truncated file?)")
    return data, int(md.width), int(md.height)


def read_pcd(path: Path) -> np.ndarray:
    """PCD -> (N, C) float32: x, y, z, then other scalar fields (packed rgb/rgba -> r, g, b in [0, 1])."""
    data, _, _ = read_pcd_raw(path)
    cols: dict[str, np.ndarray] = {}
    for name in data.dtype.names or ():
        if name.lower() in _RGB_FIELDS:
            rgb = unpack_rgb(data[name])
            cols.update(r=rgb[:, 0], g=rgb[:, 1], b=rgb[:, 2])
        elif "__" not in name and not name.startswith("#"):  # skip multi-count and padding fields
            cols[name] = data[name]
    return xyz_first(cols)


def _ply_header(f) -> tuple[str, list[tuple[str, int, list[tuple[str, str | None]]]]]:
    if f.readline().strip() != b"ply":
        raise ValueError("not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise ValueError("PLY header has no end_header line")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError("PLY property before any element")
            if tok[1] == "list":
                elements[-1][2].append((tok[-1], None))
            else:
                if tok[1] not in _PLY_TYPES:
                    raise ValueError(f"unknown PLY property type {tok[1]!r}")
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
        elif tok[0] == "end_header":
            break
    if fmt not in ("ascii", *_PLY_ENDIAN):
        raise ValueError(f"unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply(path: Path) -> np.ndarray:
    """PLY vertices (ascii or binary, scalar properties only) -> (N, C) float32, x, y, z first."""
    with open(path, "rb") as f:
        fmt, elements = _ply_header(f)
        body = f.read()
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise ValueError("PLY file has no 'vertex' element")
    vi = names.index("vertex")
    _, n, props = elements[vi]
    if any(t is None for _, t in props):
        raise ValueError("list properties in the PLY vertex element are not supported")
    if fmt == "ascii":
        lines = body.decode("ascii").splitlines()
        start = sum(e[1] for e in elements[:vi])
        rows = lines[start:start + n]
        if len(rows) != n:
            raise ValueError(f"PLY declares {n} vertices but holds {len(rows)} (truncated?)")
        table = np.loadtxt(rows, dtype=np.float64, ndmin=2) if n else np.zeros((0, len(props)))
        if table.shape[1] != len(props):
            raise ValueError(f"PLY vertex rows have {table.shape[1]} values, expected {len(props)}")
        cols = {p: table[:, i] for i, (p, _) in enumerate(props)}
    else:
        end = _PLY_ENDIAN[fmt]
        offset = 0
        for _, count, eprops in elements[:vi]:
            if any(t is None for _, t in eprops):
                raise ValueError("binary PLY with list-property elements before 'vertex' is not supported")
            offset += count * np.dtype([(p, end + t) for p, t in eprops]).itemsize
        dtype = np.dtype([(p, end + t) for p, t in props])
        if len(body) < offset + n * dtype.itemsize:
            raise ValueError(f"PLY body too short for {n} vertices (truncated?)")
        arr = np.frombuffer(body, dtype=dtype, count=n, offset=offset)
        cols = {p: arr[p] for p, _ in props}
    return xyz_first(cols)


def read_text_points(path: Path, max_rows: int | None = None) -> np.ndarray:
    """Text rows 'x y z ...' or 'x,y,z,...' -> (N, C) float32 (first `max_rows` rows when given)."""
    with open(path, "r", encoding="utf-8") as f:
        first = ""
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                first = line
                break
    delimiter = "," if "," in first else None
    return np.loadtxt(path, dtype=np.float32, delimiter=delimiter, ndmin=2, max_rows=max_rows)


def read_point_file(path: Path) -> np.ndarray:
    """Any supported point file -> (N, C>=3) float32 with x, y, z first."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "points" in z.files:
                arr = z["points"]
            elif len(z.files) == 1:
                arr = z[z.files[0]]
            else:
                raise ValueError(f"npz needs a 'points' key, found {z.files}")
    elif suffix == ".ply":
        arr = read_ply(path)
    elif suffix == ".pcd":
        arr = read_pcd(path)
    elif suffix in (".txt", ".xyz", ".pts"):
        arr = read_text_points(path)
    else:
        raise ValueError(f"unsupported point file suffix {suffix!r}; use one of {POINT_SUFFIXES}")
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind not in "fiu":
        raise ValueError(f"expected an (N, >=3) numeric point array, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)
