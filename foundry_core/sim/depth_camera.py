"""Pinhole depth camera (RGB-D style organised clouds, no colour).

    cam = DepthCamera(DepthCameraConfig())
    xyz, labels = cam.capture(scene, pose, rng)   # (H, W, 3) float32 NaN = no return, (H, W) int32 -1

Frame: points are in the camera optical frame, x right, y down, z forward (REP 103
``*_optical_frame``); z is the depth.  The camera sits ``mount_height`` above the robot base,
looks along the base x axis and is pitched down by ``pitch_deg``; ``pose`` is the base pose in the
world (a (4, 4) world_from_base transform or (x, y, yaw)).  ``level_from_optical`` rotates optical
points into a level frame at the camera (x forward, y left, z up).

Noise: depth z += N(0, noise_base + noise_quad * z^2); returns with a noisy depth outside
[min_range, max_range] and misses are NaN / -1.  Pixel (u, v) looks through its centre
((u + 0.5 - W/2) / f, (v + 0.5 - H/2) / f, 1) with f = (W/2) / tan(hfov/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..geometry import rotation_about
from .frames import BODY_FROM_OPTICAL, as_pose, rotate
from .lidar import as_rng
from .primitives import cast_rays, tile_order
from .scene import Scene


@dataclass
class DepthCameraConfig:
    width: int = 640
    height: int = 480
    hfov_deg: float = 87.0
    max_range: float = 10.0
    min_range: float = 0.2
    noise_base: float = 0.001            # depth sigma at z = 0 (m)
    noise_quad: float = 0.0025           # depth sigma grows by noise_quad * z^2 (m / m^2)
    dropout: float = 0.0                 # probability a pixel loses its return
    mount_height: float = 0.6
    pitch_deg: float = 15.0              # downward tilt
    tile: tuple[int, int] = (8, 8)       # ray bundle tile (rows, cols) for the caster

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or not 0.0 < self.hfov_deg < 180.0:
            raise ValueError("need width, height >= 1 and 0 < hfov_deg < 180")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError("need 0 <= min_range < max_range")


class DepthCamera:
    """Casts one ray per pixel against a Scene."""

    def __init__(self, cfg: DepthCameraConfig | None = None):
        self.cfg = cfg = cfg or DepthCameraConfig()
        self.focal = (cfg.width / 2) / math.tan(math.radians(cfg.hfov_deg) / 2)
        u = (np.arange(cfg.width) + 0.5 - cfg.width / 2) / self.focal
        v = (np.arange(cfg.height) + 0.5 - cfg.height / 2) / self.focal
        rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1).reshape(-1, 3)
        self.rays = rays.astype(np.float32)                                   # (H*W, 3) with z = 1
        self.directions = (rays / np.linalg.norm(rays, axis=1, keepdims=True)).astype(np.float32)
        self._order = tile_order(cfg.height, cfg.width, *cfg.tile)
        self._dirs_tiled = np.ascontiguousarray(self.directions[self._order])
        self.level_from_optical = rotation_about(1, math.radians(cfg.pitch_deg)) @ BODY_FROM_OPTICAL

    def sensor_pose(self, pose) -> np.ndarray:
        """(4, 4) world_from_optical for a base pose (world_from_base or (x, y, yaw))."""
        mount = np.eye(4)
        mount[:3, :3] = self.level_from_optical
        mount[2, 3] = self.cfg.mount_height
        return as_pose(pose) @ mount

    def capture(self, scene: Scene, pose=(0.0, 0.0, 0.0),
                rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One frame: points (H, W, 3) float32 in the optical frame (NaN for no return) and labels
        (H, W) int32 (-1 for no return)."""
        cfg, rng = self.cfg, as_rng(rng)
        world = self.sensor_pose(pose)
        dirs_w = rotate(self._dirs_tiled, world[:3, :3])
        reach = cfg.max_range / float(self.directions[:, 2].min())       # longest ray to depth max_range
        hits = cast_rays(world[:3, 3], dirs_w, scene.primitives, max_range=reach)
        n = self.rays.shape[0]
        depth = np.empty(n, np.float32)
        cls = np.empty(n, np.int32)
        depth[self._order], cls[self._order] = hits.distance, hits.class_id
        depth *= self.directions[:, 2]
        sigma = np.float32(cfg.noise_base) + np.float32(cfg.noise_quad) * np.where(cls >= 0, depth, 0) ** 2
        depth += rng.standard_normal(n, dtype=np.float32) * sigma
        kept = rng.random(n, dtype=np.float32) >= np.float32(cfg.dropout)
        valid = (cls >= 0) & kept & (depth >= cfg.min_range) & (depth <= cfg.max_range)
        pts = np.full((n, 3), np.nan, np.float32)
        pts[valid] = self.rays[valid] * depth[valid, None]
        labels = np.where(valid, cls, -1).astype(np.int32)
        return pts.reshape(cfg.height, cfg.width, 3), labels.reshape(cfg.height, cfg.width)
