"""OmniObject3D-style folders: one sub-folder per class, point files per object inside."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foundry_core.data.formats._common import check_split, fail, natural_key, reading, require_dir
from foundry_core.data.formats.pointfiles import POINT_SUFFIXES, read_point_file
from foundry_core.data.shapeset import ShapeSet, stratified_split

LAYOUT = ("<root>/<class>/**/<object>{.npy,.npz (key 'points'),.ply,.pcd,.txt,.xyz} — one sub-folder per "
          "class (class names = sorted folder names), each file an (N,>=3) cloud with x,y,z first")


def load_omniobject3d(root: str | Path, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                      keep_extra: bool = False) -> ShapeSet:
    """Clouds (N_i, 3) float32 [(N_i, C) with keep_extra=True: all file columns, C equal in all files].

    split: all | train | test, the latter two from `stratified_split(labels, test_fraction, seed)`.
    Files are searched recursively in each class folder (e.g. <class>/<object>/pcd_16384.ply).
    """
    fmt = "omniobject3d"
    check_split(fmt, split, ("all", "train", "test"))
    root = require_dir(Path(root), fmt, LAYOUT, "dataset root")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if not class_dirs:
        raise fail(fmt, LAYOUT, f"no class folders in {root}")
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = sorted((p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in POINT_SUFFIXES),
                       key=natural_key)
        if not found:
            raise fail(fmt, LAYOUT, f"class folder {d} holds no point files")
        files += found
        labels += [label] * len(found)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if split == "all":
        index = np.arange(len(files))
    else:
        train, test = stratified_split(labels_arr, test_fraction, seed)
        index = train if split == "train" else test
    points = []
    for i in index:
        with reading(fmt, LAYOUT, files[i]):
            arr = read_point_file(files[i])
        points.append(arr if keep_extra else np.ascontiguousarray(arr[:, :3]))
    if keep_extra and len({p.shape[1] for p in points}) > 1:
        raise fail(fmt, LAYOUT, "keep_extra=True needs the same number of columns in every file, "
                                f"got {sorted({p.shape[1] for p in points})}")
    return ShapeSet(points=points, labels=labels_arr[index], classes=[d.name for d in class_dirs],
                    name=f"{fmt}/{split}",
                    meta={"root": str(root), "split": split,
                          "files": [str(files[i].relative_to(root)) for i in index]})
