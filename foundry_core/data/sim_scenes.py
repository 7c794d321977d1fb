"""Scene semantic-segmentation data from simulated captures (data source ``sim_scenes``).

    shapes = generate_scene_set(200, seed=0, sensor="lidar")
    shapes.points[i]    # (N_i, 3) float32 (N_i, 4 with intensity=True: x y z intensity)
    shapes.seg[i]       # (N_i,) int64 ids into shapes.seg_classes == SIM_CLASSES

Scene i is ``generate_scene((seed, i))``; capture k of it is taken from a random base pose in the
object-free disc (yaw uniform) with noise from ``default_rng([seed, i, k])``.  Points are in a
level, z-up frame: ``frame="sensor"`` puts the origin at the sensor (for the LiDAR this is exactly
its output frame; depth-camera points are rotated out of the optical frame, pitch removed),
``frame="base"`` on the ground below it.  Each capture is cropped to |x|, |y| <= crop and, with
points_per_cloud, randomly subsampled to at most that many points.  Cloud labels are 0 ("scene").
``lidar`` may be a list of LiDAR configs (beams, field of view, mount height of different sensors):
each LiDAR capture then uses one of them, drawn uniformly.

In a training YAML:  data: {source: sim_scenes, options: {num_scenes: 200, sensor: lidar}, with_seg: true}
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.depth_camera import DepthCamera, DepthCameraConfig
from ..sim.frames import rotate
from ..sim.lidar import LidarConfig, LidarSensor
from ..sim.scene import SIM_CLASSES, SceneConfig, generate_scene
from .shapeset import ShapeSet

SENSORS = ("lidar", "depth", "mixed")
FRAMES = ("sensor", "base")
SPLITS = ("all", "train", "test")


def _config(cls, value: Any):
    """A config dataclass from None, an instance, or a dict (e.g. from YAML; unknown keys rejected)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        bad = sorted(set(value) - known)
        if bad:
            raise ValueError(f"{cls.__name__}: unknown option(s) {bad}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    raise TypeError(f"{cls.__name__}: expected a dict or {cls.__name__}, got {type(value).__name__}")


def _capture(kind: str, lidar: LidarSensor, cam: DepthCamera, scene, pose, rng, frame: str,
             intensity: bool) -> tuple[np.ndarray, np.ndarray]:
    """One capture as (N, 3|4) float32 points in the level sensor / base frame and (N,) int64 labels."""
    if kind == "lidar":
        pts, labels = lidar.scan(scene, pose, rng)
        if not intensity:
            pts = pts[:, :3]
        height = lidar.cfg.mount_height
    else:
        xyz, lab = cam.capture(scene, pose, rng)
        valid = lab.reshape(-1) >= 0
        pts = rotate(xyz.reshape(-1, 3)[valid], cam.level_from_optical)
        labels = lab.reshape(-1)[valid]
        height = cam.cfg.mount_height
    pts = np.ascontiguousarray(pts, dtype=np.float32)
    if frame == "base":
        pts[:, 2] += np.float32(height)
    return pts, labels.astype(np.int64)


def generate_scene_set(num_scenes: int = 200, seed: int = 0, sensor: str = "lidar",
                       points_per_cloud: int | None = 16384, captures_per_scene: int = 1,
                       crop: float = 12.0, frame: str = "sensor", intensity: bool = False,
                       first_scene: int = 0, lidar: LidarConfig | dict | list | None = None,
                       depth: DepthCameraConfig | dict | None = None,
                       scene: SceneConfig | dict | None = None) -> ShapeSet:
    """num_scenes * captures_per_scene labelled clouds of scenes first_scene .. first_scene+num_scenes-1.
    sensor: lidar | depth | mixed (each capture picks one at random); see the module docstring."""
    if sensor not in SENSORS:
        raise ValueError(f"sim_scenes: sensor must be one of {SENSORS}, got {sensor!r}")
    if frame not in FRAMES:
        raise ValueError(f"sim_scenes: frame must be one of {FRAMES}, got {frame!r}")
    if intensity and sensor != "lidar":
        raise ValueError("sim_scenes: intensity=True needs sensor='lidar' (the depth camera has none)")
    if num_scenes < 0 or captures_per_scene < 1 or crop <= 0:
        raise ValueError("sim_scenes: need num_scenes >= 0, captures_per_scene >= 1, crop > 0")
    if points_per_cloud is not None and points_per_cloud < 1:
        raise ValueError("sim_scenes: points_per_cloud must be >= 1 or None")
    scene_cfg = _config(SceneConfig, scene)
    lidars = [LidarSensor(_config(LidarConfig, c)) for c in (lidar if isinstance(lidar, (list, tuple)) else [lidar])]
    if not lidars:
        raise ValueError("sim_scenes: lidar needs at least one config")
    cam = DepthCamera(_config(DepthCameraConfig, depth))
    pose_radius = 0.6 * scene_cfg.free_radius
    points, segs, kinds, poses = [], [], [], []
    for i in range(first_scene, first_scene + num_scenes):
        sc = generate_scene((seed, i), scene_cfg)
        for k in range(captures_per_scene):
            rng = np.random.default_rng([seed, i, k])
            kind = sensor if sensor != "mixed" else ("lidar", "depth")[int(rng.integers(2))]
            r, a = pose_radius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            pose = (r * math.cos(a), r * math.sin(a), rng.uniform(-math.pi, math.pi))
            lidar_s = lidars[int(rng.integers(len(lidars)))] if len(lidars) > 1 else lidars[0]
            pts, seg = _capture(kind, lidar_s, cam, sc, pose, rng, frame, intensity)
            keep = np.flatnonzero((np.abs(pts[:, 0]) <= crop) & (np.abs(pts[:, 1]) <= crop))
            if points_per_cloud is not None and keep.size > points_per_cloud:
                keep = np.sort(rng.choice(keep, points_per_cloud, replace=False))
            points.append(pts[keep])
            segs.append(seg[keep])
            kinds.append(kind)
            poses.append(pose)
    return ShapeSet(points=points, labels=np.zeros(len(points), np.int64), classes=["scene"], seg=segs,
                    seg_classes=list(SIM_CLASSES), name="sim_scenes",
                    meta={"sensor": kinds, "base_pose": poses, "frame": frame, "seed": seed})


def load_sim_scenes(root: str | Path = "", split: str = "all", num_scenes: int = 200,
                    test_scenes: int | None = None, seed: int = 0, **options) -> ShapeSet:
    """Data-source entry (formats registry name ``sim_scenes``; `root` is unused).  split=all / train:
    scenes 0..num_scenes-1; split=test: test_scenes (default max(1, num_scenes // 5)) further scenes
    num_scenes.. (disjoint from train).  Other options go to generate_scene_set."""
    del root
    if split not in SPLITS:
        raise ValueError(f"sim_scenes: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if split == "test":
        n = max(1, num_scenes // 5) if test_scenes is None else int(test_scenes)
        return generate_scene_set(n, seed=seed, first_scene=num_scenes, **options)
    return generate_scene_set(num_scenes, seed=seed, **options)
