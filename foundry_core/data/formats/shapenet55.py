"""ShapeNet-55 in the Point-BERT layout (one (8192, 3) .npy per shape)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foundry_core.data.formats._common import (
    as_cloud, check_split, fail, read_lines, reading, require_dir, require_file,
)
from foundry_core.data.shapeset import ShapeSet

LAYOUT = ("<root>/ShapeNet-55/{train,test}.txt listing names like "
          "02691156-1a04e3eab45ca15dd86060f189eb133.npy, and <root>/shapenet_pc/<name> holding "
          "an (8192,3) float array each; class = synset prefix before '-'")


def _synset(name: str) -> str:
    synset = name.split("-", 1)[0]
    if "-" not in name or not synset.isdigit():
        raise fail("shapenet55", LAYOUT, f"list entry {name!r} is not '<synset>-<model>.npy'")
    return synset


def load_shapenet55(root: str | Path, split: str = "train", num_points: int | None = None) -> ShapeSet:
    """ShapeNet-55 clouds (N, 3) float32 (N = 8192, or the first `num_points` rows).

    Labels index the sorted synsets found in train.txt and test.txt together (55 on the real
    data), so both splits share one class table; class names are the synset ids.
    """
    fmt = "shapenet55"
    check_split(fmt, split, ("train", "test"))
    root = require_dir(Path(root), fmt, LAYOUT, "dataset root")
    lists = require_dir(root / "ShapeNet-55", fmt, LAYOUT)
    pc_dir = require_dir(root / "shapenet_pc", fmt, LAYOUT)
    require_file(lists / f"{split}.txt", fmt, LAYOUT, "split file")
    entries = {s: read_lines(lists / f"{s}.txt", fmt, LAYOUT)
               for s in ("train", "test") if (lists / f"{s}.txt").is_file()}
    classes = sorted({_synset(n) for names in entries.values() for n in names})
    index = {c: i for i, c in enumerate(classes)}
    names = entries[split]
    points, labels = [], []
    for name in names:
        path = pc_dir / name
        if not path.is_file():
            raise fail(fmt, LAYOUT, f"missing point file {path}")
        with reading(fmt, LAYOUT, path):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            arr = np.array(arr[:num_points] if num_points else arr)
        points.append(np.ascontiguousarray(as_cloud(arr, fmt, LAYOUT, str(path))[:, :3]))
        labels.append(index[_synset(name)])
    return ShapeSet(points=points, labels=np.asarray(labels, dtype=np.int64), classes=classes,
                    name=f"{fmt}/{split}", meta={"root": str(root), "split": split, "files": names})
