"""Generic .npz shape collections (e.g. shared/data/shapes/infomr_2048.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foundry_core.data.formats._common import (
    as_cloud, as_labels, check_split, default_class_names, fail, reading,
)
from foundry_core.data.shapeset import ShapeSet, stratified_split

LAYOUT = ("a .npz file (or <root>/<split>.npz) with 'points' (M,N,3+F) float [or a 1-D object array of "
          "(N_i,3+F) arrays], 'label' (M,) int, optional 'seg' (M,N) int [or object array], optional "
          "'classes' (C,) names, optional 'ids' (M,)")


def _clouds(points: np.ndarray, where: str) -> list[np.ndarray]:
    fmt = "npz"
    if points.dtype == object:
        if points.ndim != 1:
            raise fail(fmt, LAYOUT, f"{where}: object 'points' must be 1-D, got shape {points.shape}")
        return [as_cloud(p, fmt, LAYOUT, f"{where} points[{i}]") for i, p in enumerate(points)]
    if points.ndim != 3 or points.shape[2] < 3 or points.dtype.kind not in "fiu":
        raise fail(fmt, LAYOUT, f"{where}: 'points' has shape {points.shape} dtype {points.dtype}, "
                                "expected (M,N,3+F) float")
    return list(np.ascontiguousarray(points, dtype=np.float32))


def _segs(seg: np.ndarray, clouds: list[np.ndarray], where: str) -> list[np.ndarray]:
    items = list(seg) if seg.dtype == object or seg.ndim == 2 else None
    if items is None or len(items) != len(clouds):
        raise fail("npz", LAYOUT, f"{where}: 'seg' has shape {seg.shape}, expected ({len(clouds)},N)")
    out = []
    for i, (s, c) in enumerate(zip(items, clouds)):
        s = as_labels(np.asarray(s), None, "npz", LAYOUT, f"{where} seg[{i}]")
        if len(s) != len(c):
            raise fail("npz", LAYOUT, f"{where}: seg[{i}] has {len(s)} labels for {len(c)} points")
        out.append(s)
    return out


def load_npz(root: str | Path, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
             allow_pickle: bool = False) -> ShapeSet:
    """Clouds (N, 3+F) float32 from an .npz file.

    root: the .npz file, or a folder holding <split>.npz (then loaded whole).
    For a single file, split all | train | test; train/test come from
    `stratified_split(label, test_fraction, seed)`. allow_pickle must be True for object arrays.
    """
    fmt = "npz"
    root = Path(root)
    if root.is_dir():
        path, sub = root / f"{split}.npz", "all"
        if not path.is_file():
            raise fail(fmt, LAYOUT, f"missing file {path}")
    elif root.is_file():
        path, sub = root, check_split(fmt, split, ("all", "train", "test"))
    else:
        raise fail(fmt, LAYOUT, f"missing file {root}")
    with reading(fmt, LAYOUT, path), np.load(path, allow_pickle=allow_pickle) as z:
        missing = [k for k in ("points", "label") if k not in z.files]
        if missing:
            raise fail(fmt, LAYOUT, f"{path.name} lacks key(s) {missing}; has {z.files}")
        try:
            raw = {k: z[k] for k in ("points", "label", "seg", "classes", "ids") if k in z.files}
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise fail(fmt, LAYOUT, f"{path.name} holds object arrays; pass allow_pickle=True "
                                        "if you trust the file") from exc
            raise
    clouds = _clouds(raw["points"], path.name)
    classes = [str(c) for c in raw["classes"].reshape(-1)] if "classes" in raw else None
    label = raw["label"]
    if label.shape not in ((len(clouds),), (len(clouds), 1)):
        raise fail(fmt, LAYOUT, f"{path.name}: 'label' has shape {label.shape}, expected ({len(clouds)},)")
    labels = as_labels(label, len(classes) if classes is not None else None, fmt, LAYOUT, path.name)
    if classes is None:
        classes = default_class_names(int(labels.max()) + 1 if labels.size else 0)
    seg = _segs(raw["seg"], clouds, path.name) if "seg" in raw else None
    meta: dict = {"root": str(root), "split": split, "file": str(path)}
    if "ids" in raw:
        meta["ids"] = [str(i) for i in raw["ids"].reshape(-1)]
    data = ShapeSet(points=clouds, labels=labels, classes=classes, seg=seg, name=f"{fmt}:{path.stem}/{split}",
                    meta=meta)
    if sub == "all":
        return data
    train, test = stratified_split(labels, test_fraction, seed)
    index = train if sub == "train" else test
    out = data.subset(index)
    if "ids" in meta:
        out.meta["ids"] = [meta["ids"][i] for i in index]
    return out
