"""Organised, labelled PCD scenes (mOSD / OSD style: fields label x y z rgba, 640x480, NaN invalid)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foundry_core.data.formats._common import fail, natural_key, reading, require_dir
from foundry_core.data.formats.pointfiles import read_pcd_raw, unpack_rgb
from foundry_core.data.shapeset import ShapeSet

LAYOUT = ("<root>/*.pcd or <root>/<split>/*.pcd (train may be named learn/), each an organised PCD "
          "(WIDTH x HEIGHT, any DATA encoding) with fields label x y z [rgb|rgba]; label 0 = invalid, "
          "1-9 = table, 20-29 = 1st object, 30-39 = 2nd object, ...")
LABEL_MODES = ("semantic", "instance", "raw")
_SPLIT_DIRS = {"train": ("train", "learn"), "test": ("test",), "val": ("val",), "all": ()}


def _scene_files(root: Path, split: str) -> tuple[Path, list[Path]]:
    fmt = "pcd_scenes"
    if split not in _SPLIT_DIRS:
        raise ValueError(f"{fmt}: unknown split {split!r}; valid splits: {', '.join(_SPLIT_DIRS)}")
    require_dir(root, fmt, LAYOUT, "dataset root")
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            root = root / name
            break
    files = sorted(root.glob("*.pcd"), key=natural_key)
    if not files:
        raise fail(fmt, LAYOUT, f"no .pcd files in {root}")
    if root.name not in _SPLIT_DIRS[split] and split in ("test", "val"):
        raise ValueError(f"{fmt}: {root} holds the scenes directly; split {split!r} needs a "
                         f"{split}/ sub-folder (use split='all' or 'train' for a flat folder)")
    return root, files


def map_scene_labels(raw: np.ndarray, label_mode: str) -> np.ndarray:
    """Raw mOSD labels (> 0) -> (N,) int64: semantic 0 table / 1 object; instance 0 table, k = object k."""
    raw = raw.astype(np.int64)
    if label_mode == "raw":
        return raw
    if np.any((raw >= 10) & (raw < 20)) or np.any(raw <= 0):
        bad = np.unique(raw[(raw <= 0) | ((raw >= 10) & (raw < 20))])
        raise ValueError(f"labels {bad.tolist()} fit neither table (1-9) nor objects (>= 20)")
    if label_mode == "semantic":
        return (raw >= 20).astype(np.int64)
    return np.where(raw >= 20, raw // 10 - 1, 0)


def load_pcd_scenes(root: str | Path, split: str = "all", label_mode: str = "semantic",
                    rgb: bool = False, label_field: str = "label") -> ShapeSet:
    """One cloud per scene: points (K, 3) float32 [(K, 6) with rgb=True, r g b in [0, 1]] holding the
    K finite points with label != 0, seg (K,) int64 mapped by `label_mode` (semantic | instance | raw).

    meta["shape"][i] = (height, width) of scene i; meta["index"][i] = (K,) int64 flat indices of the
    kept points into the row-major height*width grid; meta["files"] = file names. labels are -1.
    """
    fmt = "pcd_scenes"
    if label_mode not in LABEL_MODES:
        raise ValueError(f"{fmt}: label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    root, files = _scene_files(Path(root), split)
    points, segs, shapes, indices = [], [], [], []
    for path in files:
        with reading(fmt, LAYOUT, path):
            data, width, height = read_pcd_raw(path)
        names = data.dtype.names or ()
        need = [label_field, "x", "y", "z"]
        colour = next((n for n in ("rgba", "rgb") if n in names), None)
        if any(n not in names for n in need) or (rgb and colour is None):
            raise fail(fmt, LAYOUT, f"{path.name} has fields {list(names)}, needs {need}"
                                    + (" and rgb/rgba" if rgb else ""))
        xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
        raw = np.asarray(data[label_field])
        keep = np.flatnonzero(np.isfinite(xyz).all(axis=1) & (raw != 0))
        try:
            seg = map_scene_labels(raw[keep], label_mode)
        except ValueError as exc:
            raise fail(fmt, LAYOUT, f"{path.name}: {exc}") from exc
        cloud = xyz[keep]
        if rgb:
            cloud = np.concatenate([cloud, unpack_rgb(data[colour][keep])], axis=1)
        points.append(np.ascontiguousarray(cloud))
        segs.append(seg)
        shapes.append((height, width))
        indices.append(keep.astype(np.int64))
    if label_mode == "semantic":
        seg_classes: list[str] | None = ["table", "object"]
    elif label_mode == "instance":
        k = max((int(s.max()) for s in segs if s.size), default=0)
        seg_classes = ["table"] + [f"object_{i}" for i in range(1, k + 1)]
    else:
        seg_classes = None
    return ShapeSet(points=points, labels=np.full(len(points), -1, dtype=np.int64), classes=[],
                    seg=segs, seg_classes=seg_classes, name=f"{fmt}/{split}",
                    meta={"root": str(root), "split": split, "files": [p.name for p in files],
                          "shape": shapes, "index": indices, "label_mode": label_mode})
