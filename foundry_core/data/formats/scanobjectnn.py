"""ScanObjectNN h5 files (OBJ_ONLY, OBJ_BG, PB_T50_RS variants)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from foundry_core.data.formats._common import as_labels, check_split, fail, reading, require_dir
from foundry_core.data.shapeset import ShapeSet

CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
           "bed", "pillow", "sink", "sofa", "toilet"]
VARIANTS = {  # variant -> (folder, file suffix)
    "obj_only": ("main_split_nobg", ""),
    "obj_bg": ("main_split", ""),
    "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
}
LAYOUT = ("<root>/main_split_nobg/{training,test}_objectdataset.h5 (OBJ_ONLY), "
          "<root>/main_split/{training,test}_objectdataset.h5 (OBJ_BG), "
          "<root>/main_split/{training,test}_objectdataset_augmentedrot_scale75.h5 (PB_T50_RS); "
          "datasets 'data' (M,N,3) float, 'label' (M,) int in 0..14, optional 'mask' (M,N)")


def load_scanobjectnn(root: str | Path, split: str = "train", variant: str = "pb_t50_rs",
                      with_mask: bool = False) -> ShapeSet:
    """ScanObjectNN clouds (2048, 3) float32, 15 classes.

    variant: obj_only | obj_bg | pb_t50_rs (also accepts the upper-case / hyphenated names).
    with_mask: fill `seg` from 'mask' as 0 background (mask == -1) / 1 object.
    <root> may also be the folder holding `h5_files/`.
    """
    fmt = "scanobjectnn"
    key = variant.lower().replace("-", "_")
    if key not in VARIANTS:
        raise ValueError(f"{fmt}: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    check_split(fmt, split, ("train", "test"))
    root = require_dir(Path(root), fmt, LAYOUT, "dataset root")
    if not any((root / f).is_dir() for f, _ in VARIANTS.values()) and (root / "h5_files").is_dir():
        root = root / "h5_files"
    folder, suffix = VARIANTS[key]
    prefix = "training" if split == "train" else "test"
    path = root / folder / f"{prefix}_objectdataset{suffix}.h5"
    if not path.is_file():
        raise fail(fmt, LAYOUT, f"missing file {path} for variant {key}")
    with reading(fmt, LAYOUT, path), h5py.File(path, "r") as h5:
        missing = [k for k in ("data", "label") if k not in h5]
        if missing:
            raise fail(fmt, LAYOUT, f"{path.name} lacks dataset(s) {missing}; has {sorted(h5.keys())}")
        data = np.asarray(h5["data"][...], dtype=np.float32)
        label = np.asarray(h5["label"][...])
        mask = np.asarray(h5["mask"][...]) if with_mask and "mask" in h5 else None
    if data.ndim != 3 or data.shape[2] < 3:
        raise fail(fmt, LAYOUT, f"{path.name}: 'data' has shape {data.shape}, expected (M,N,3)")
    if label.shape not in ((len(data),), (len(data), 1)):
        raise fail(fmt, LAYOUT, f"{path.name}: 'label' has shape {label.shape}, expected ({len(data)},)")
    labels = as_labels(label, len(CLASSES), fmt, LAYOUT, path.name)
    seg = seg_classes = None
    if with_mask:
        if mask is None:
            raise fail(fmt, LAYOUT, f"{path.name} has no 'mask' dataset (with_mask=True)")
        if mask.shape != data.shape[:2]:
            raise fail(fmt, LAYOUT, f"{path.name}: 'mask' has shape {mask.shape}, expected {data.shape[:2]}")
        seg = list((mask != -1).astype(np.int64))
        seg_classes = ["background", "object"]
    points = list(np.ascontiguousarray(data[:, :, :3]))
    return ShapeSet(points=points, labels=labels, classes=list(CLASSES), seg=seg, seg_classes=seg_classes,
                    name=f"{fmt}_{key}/{split}", meta={"root": str(root), "split": split, "file": str(path)})
