"""ModelNet40/10 loaders: PointNet h5 files and the `modelnet40_normal_resampled` txt layout."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from foundry_core.data.formats._common import (
    as_labels, check_split, default_class_names, fail, natural_key, read_lines, reading, require_dir,
)
from foundry_core.data.formats.pointfiles import read_text_points
from foundry_core.data.shapeset import ShapeSet

H5_LAYOUT = ("<root>/ply_data_{train,test}<k>.h5 with datasets 'data' (M,N,3) float and 'label' (M,1) "
             "or (M,) int [optional 'normal' (M,N,3)], plus optional <root>/shape_names.txt (one class per line)")
TXT_LAYOUT = ("<root>/{v}_shape_names.txt (one class per line), <root>/{v}_{{train,test}}.txt (ids like "
              "airplane_0001), and <root>/<class>/<id>.txt with comma-separated rows x,y,z,nx,ny,nz")


def load_modelnet40_h5(root: str | Path, split: str = "train", normals: bool = False,
                       num_classes: int | None = None) -> ShapeSet:
    """PointNet's modelnet40_ply_hdf5_2048: clouds (2048, 3) float32 [(2048, 6) with normals=True].

    Class names come from shape_names.txt, else "class_<i>" for `num_classes` (default max label + 1).
    """
    fmt, layout = "modelnet40_h5", H5_LAYOUT
    check_split(fmt, split, ("train", "test"))
    root = require_dir(Path(root), fmt, layout, "dataset root")
    files = sorted(root.glob(f"ply_data_{split}*.h5"), key=natural_key)
    if not files:
        raise fail(fmt, layout, f"no ply_data_{split}*.h5 files in {root}")
    names_file = root / "shape_names.txt"
    classes = read_lines(names_file, fmt, layout) if names_file.is_file() else None
    datas, labels = [], []
    for path in files:
        with reading(fmt, layout, path), h5py.File(path, "r") as h5:
            keys = ["data", "label"] + (["normal"] if normals else [])
            missing = [k for k in keys if k not in h5]
            if missing:
                raise fail(fmt, layout, f"{path.name} lacks dataset(s) {missing}; has {sorted(h5.keys())}")
            data = np.asarray(h5["data"][...], dtype=np.float32)
            label = np.asarray(h5["label"][...])
            if normals:
                nrm = np.asarray(h5["normal"][...], dtype=np.float32)
                if nrm.shape != data.shape:
                    raise fail(fmt, layout, f"{path.name}: 'normal' shape {nrm.shape} != 'data' shape {data.shape}")
                data = np.concatenate([data, nrm], axis=2)
        if data.ndim != 3 or data.shape[2] < 3:
            raise fail(fmt, layout, f"{path.name}: 'data' has shape {data.shape}, expected (M,N,3)")
        if label.shape not in ((len(data),), (len(data), 1)):
            raise fail(fmt, layout, f"{path.name}: 'label' has shape {label.shape}, expected ({len(data)},1)")
        datas.append(data)
        labels.append(as_labels(label, len(classes) if classes else num_classes, fmt, layout, path.name))
    label_arr = np.concatenate(labels)
    if classes is None:
        classes = default_class_names(num_classes or (int(label_arr.max()) + 1 if label_arr.size else 0))
    points = [cloud for data in datas for cloud in data]
    return ShapeSet(points=points, labels=label_arr, classes=classes, name=f"{fmt}/{split}",
                    meta={"root": str(root), "split": split, "files": [p.name for p in files]})


def load_modelnet40_txt(root: str | Path, split: str = "train", variant: str = "modelnet40",
                        normals: bool = False, num_points: int | None = None) -> ShapeSet:
    """`modelnet40_normal_resampled`: clouds (N, 3) float32 [(N, 6) with normals=True].

    variant: "modelnet40" or "modelnet10" (file-name prefix); num_points: keep the first N rows
    of each file (the files hold 10000 points; reading fewer is much faster).
    """
    fmt = "modelnet40_txt"
    if variant not in ("modelnet40", "modelnet10"):
        raise ValueError(f"{fmt}: variant must be 'modelnet40' or 'modelnet10', got {variant!r}")
    layout = TXT_LAYOUT.format(v=variant)
    check_split(fmt, split, ("train", "test"))
    root = require_dir(Path(root), fmt, layout, "dataset root")
    classes = read_lines(root / f"{variant}_shape_names.txt", fmt, layout)
    index = {c: i for i, c in enumerate(classes)}
    ids = read_lines(root / f"{variant}_{split}.txt", fmt, layout)
    channels = 6 if normals else 3
    points, labels = [], []
    for shape_id in ids:
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise fail(fmt, layout, f"id {shape_id!r} in {variant}_{split}.txt names unknown class {cls!r}")
        path = root / cls / f"{shape_id}.txt"
        if not path.is_file():
            raise fail(fmt, layout, f"missing point file {path}")
        with reading(fmt, layout, path):
            arr = read_text_points(path, max_rows=num_points)
        if arr.shape[1] < channels or len(arr) == 0:
            raise fail(fmt, layout, f"{path}: expected rows of >= {channels} values, got shape {arr.shape}")
        points.append(np.ascontiguousarray(arr[:, :channels]))
        labels.append(index[cls])
    return ShapeSet(points=points, labels=np.asarray(labels, dtype=np.int64), classes=classes,
                    name=f"{variant}_txt/{split}", meta={"root": str(root), "split": split, "ids": ids})
