"""ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0_normal): 16 categories, 50 parts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from foundry_core.data.formats._common import check_split, fail, read_lines, reading, require_dir
from foundry_core.data.formats.pointfiles import read_text_points
from foundry_core.data.shapeset import ShapeSet

# category -> (first part label, number of parts); categories in the standard (alphabetical) order
PARTS: dict[str, tuple[int, int]] = {
    "Airplane": (0, 4), "Bag": (4, 2), "Cap": (6, 2), "Car": (8, 4), "Chair": (12, 4),
    "Earphone": (16, 3), "Guitar": (19, 3), "Knife": (22, 2), "Lamp": (24, 4), "Laptop": (28, 2),
    "Motorbike": (30, 6), "Mug": (36, 2), "Pistol": (38, 3), "Rocket": (41, 3), "Skateboard": (44, 3),
    "Table": (47, 3),
}
CLASSES = list(PARTS)
NUM_PARTS = 50
SEG_CLASSES = [f"{c}_{k}" for c, (_, n) in PARTS.items() for k in range(n)]
CATEGORY_OF_SEG = np.array([i for i, (_, n) in enumerate(PARTS.values()) for _ in range(n)], dtype=np.int64)
LAYOUT = ("<root>/synsetoffset2category.txt (lines 'Airplane<TAB>02691156'), "
          "<root>/train_test_split/shuffled_{train,val,test}_file_list.json (entries like "
          "'shape_data/02691156/<id>'), and <root>/<synset>/<id>.txt with rows 'x y z nx ny nz part' "
          "(part = global label 0..49 inside the category's range)")
_SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}


def _synset_map(root: Path) -> dict[str, str]:
    """synset id -> category name, from synsetoffset2category.txt."""
    out = {}
    for line in read_lines(root / "synsetoffset2category.txt", "shapenetpart", LAYOUT):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in PARTS:
            raise fail("shapenetpart", LAYOUT, f"bad synsetoffset2category.txt line {line!r} "
                                               f"(category must be one of {CLASSES})")
        out[parts[1]] = parts[0]
    return out


def _file_list(root: Path, split: str) -> list[str]:
    entries: list[str] = []
    for s in _SPLITS[split]:
        path = root / "train_test_split" / f"shuffled_{s}_file_list.json"
        if not path.is_file():
            raise fail("shapenetpart", LAYOUT, f"missing split file {path}")
        with reading("shapenetpart", LAYOUT, path):
            data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
            raise fail("shapenetpart", LAYOUT, f"{path.name} must hold a JSON list of strings")
        entries.extend(data)
    return entries


def load_shapenetpart(root: str | Path, split: str = "train", normals: bool = False,
                      categories: Sequence[str] | None = None) -> ShapeSet:
    """ShapeNetPart clouds (N_i, 3) float32 [(N_i, 6) with normals=True], seg (N_i,) int64 in 0..49.

    split: train | val | test | trainval. categories: keep only these category names.
    labels index CLASSES (16); seg_classes are "<Category>_<k>"; category_of_seg (50,) int64.
    """
    fmt = "shapenetpart"
    check_split(fmt, split, tuple(_SPLITS))
    if categories is not None and (bad := [c for c in categories if c not in PARTS]):
        raise ValueError(f"{fmt}: unknown categories {bad}; valid: {CLASSES}")
    root = require_dir(Path(root), fmt, LAYOUT, "dataset root")
    synsets = _synset_map(root)
    keep = set(categories) if categories is not None else set(CLASSES)
    points, labels, segs, ids = [], [], [], []
    for entry in _file_list(root, split):
        parts = entry.strip("/").split("/")
        if len(parts) < 2 or parts[-2] not in synsets:
            raise fail(fmt, LAYOUT, f"split entry {entry!r} does not name a known synset folder")
        synset, shape_id = parts[-2], parts[-1]
        cat = synsets[synset]
        if cat not in keep:
            continue
        path = root / synset / f"{shape_id}.txt"
        if not path.is_file():
            raise fail(fmt, LAYOUT, f"missing point file {path}")
        with reading(fmt, LAYOUT, path):
            arr = read_text_points(path)
        if arr.shape[1] != 7 or len(arr) == 0:
            raise fail(fmt, LAYOUT, f"{path}: expected rows of 7 values, got shape {arr.shape}")
        part = arr[:, 6]
        first, n = PARTS[cat]
        seg = part.astype(np.int64)
        if np.any(seg != part) or seg.min() < first or seg.max() >= first + n:
            raise fail(fmt, LAYOUT, f"{path}: part labels {np.unique(part)[:8]} out of range "
                                    f"{first}..{first + n - 1} for {cat}")
        points.append(np.ascontiguousarray(arr[:, :6 if normals else 3]))
        segs.append(seg)
        labels.append(CLASSES.index(cat))
        ids.append(f"{synset}/{shape_id}")
    return ShapeSet(points=points, labels=np.asarray(labels, dtype=np.int64), classes=list(CLASSES),
                    seg=segs, seg_classes=list(SEG_CLASSES), category_of_seg=CATEGORY_OF_SEG.copy(),
                    name=f"{fmt}/{split}", meta={"root": str(root), "split": split, "ids": ids})
