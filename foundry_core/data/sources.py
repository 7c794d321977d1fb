"""Turn a DataConfig into train/test ShapeSets and torch datasets."""
from __future__ import annotations

import numpy as np

from ..configs import DataConfig
from .augment import build_augmentation
from .formats import load_dataset
from .point_dataset import PointCloudDataset
from .shapeset import ShapeSet, stratified_split
from .sim_scenes import load_sim_scenes
from .synthetic import generate_shapes


def load_splits(cfg: DataConfig) -> tuple[ShapeSet, ShapeSet]:
    """(train, test) ShapeSets. split=stratified: one fixed stratified split (seeded) of the whole
    set; split=loader: the dataset's own train/test files (sim_scenes: disjoint scene ranges)."""
    if cfg.source == "synthetic":
        shapes = generate_shapes(cfg.synthetic_shapes, cfg.num_points, seed=cfg.synthetic_seed, **cfg.options)
    elif cfg.source == "sim_scenes":          # simulated LiDAR / depth scenes (foundry_core.sim); root unused
        if cfg.split == "loader":
            return load_sim_scenes(split="train", **cfg.options), load_sim_scenes(split="test", **cfg.options)
        shapes = load_sim_scenes(split="all", **cfg.options)
    elif cfg.split == "loader":
        return (load_dataset(cfg.source, cfg.root, split="train", **cfg.options),
                load_dataset(cfg.source, cfg.root, split="test", **cfg.options))
    else:
        shapes = load_dataset(cfg.source, cfg.root, split="all", **cfg.options)
    train_idx, test_idx = stratified_split(shapes.labels, cfg.test_fraction, cfg.split_seed)
    return shapes.subset(train_idx), shapes.subset(test_idx)


def make_datasets(cfg: DataConfig, seed: int) -> tuple[PointCloudDataset, PointCloudDataset]:
    """Augmented training dataset and deterministic test dataset."""
    train, test = load_splits(cfg)
    aug = build_augmentation(cfg.augment) if cfg.augment else None
    return (PointCloudDataset(train, cfg.num_points, aug, seed=seed, with_seg=cfg.with_seg, train=True),
            PointCloudDataset(test, cfg.num_points, None, seed=seed, with_seg=cfg.with_seg, train=False))


def with_unlabelled(train: ShapeSet, extra: list[DataConfig]) -> ShapeSet:
    """train's clouds followed by the training split of each extra source (its test split is never
    read), labelled -1 and without per-point labels: more clouds for a stage that reads no labels."""
    if not extra:
        return train
    points, labels = list(train.points), [train.labels]
    for cfg in extra:
        more, _ = load_splits(cfg)
        channels = {p.shape[1] for p in more.points} | {p.shape[1] for p in train.points}
        if len(channels) > 1:
            raise ValueError(f"extra data {cfg.source}: clouds with {sorted(channels)} channels next to "
                             f"{train.name}'s; every cloud of one set needs the same channels")
        points += list(more.points)
        labels.append(np.full(len(more), -1, np.int64))
    return ShapeSet(points=points, labels=np.concatenate(labels), classes=list(train.classes),
                    name=f"{train.name}+{'+'.join(c.source for c in extra)}", meta=dict(train.meta))


def pretraining_set(cfg: DataConfig, train: ShapeSet, extra: list[DataConfig], seed: int) -> PointCloudDataset:
    """The augmented training dataset of train plus the extra sources' clouds (with_unlabelled)."""
    aug = build_augmentation(cfg.augment) if cfg.augment else None
    return PointCloudDataset(with_unlabelled(train, extra), cfg.num_points, aug, seed=seed, train=True)
