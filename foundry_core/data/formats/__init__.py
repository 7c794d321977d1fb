"""Loaders for the usual on-disk point-cloud dataset formats, and a name -> loader registry.

Every loader returns a `ShapeSet` and raises `DatasetFormatError` (message naming the expected
layout) when the dataset is missing or malformed; bad arguments (split, variant...) raise ValueError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from foundry_core.data.formats.modelnet import load_modelnet40_h5, load_modelnet40_txt
from foundry_core.data.formats.npz import load_npz
from foundry_core.data.formats.omniobject3d import load_omniobject3d
from foundry_core.data.formats.pcd_scenes import load_pcd_scenes, map_scene_labels
from foundry_core.data.formats.pointfiles import read_point_file
from foundry_core.data.formats.scanobjectnn import load_scanobjectnn
from foundry_core.data.formats.shapenet55 import load_shapenet55
from foundry_core.data.formats.shapenetpart import load_shapenetpart
from foundry_core.data.shapeset import ShapeSet

LOADERS: dict[str, Callable[..., ShapeSet]] = {
    "modelnet40_h5": load_modelnet40_h5,
    "modelnet40_txt": load_modelnet40_txt,
    "shapenet55": load_shapenet55,
    "scanobjectnn": load_scanobjectnn,
    "shapenetpart": load_shapenetpart,
    "omniobject3d": load_omniobject3d,
    "npz": load_npz,
    "pcd_scenes": load_pcd_scenes,
}


def load_dataset(fmt: str, root: str | Path, split: str = "train", **options) -> ShapeSet:
    """Load dataset `fmt` (one of LOADERS) from `root`; `options` go to that format's loader."""
    if fmt not in LOADERS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {', '.join(LOADERS)}")
    return LOADERS[fmt](root, split=split, **options)


__all__ = [
    "LOADERS", "load_dataset", "load_modelnet40_h5", "load_modelnet40_txt", "load_shapenet55",
    "load_scanobjectnn", "load_shapenetpart", "load_omniobject3d", "load_npz", "load_pcd_scenes",
    "map_scene_labels", "read_point_file",
]
