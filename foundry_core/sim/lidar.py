"""Spinning multi-beam LiDAR.

    sensor = LidarSensor(LidarConfig(beams=32))
    points, labels = sensor.scan(scene, pose, rng)   # (N, 4) x y z intensity, (N,) class ids

Frame: points are in the lidar frame = the robot base frame (x forward, y left, z up) raised by
``mount_height``; ``pose`` is the base pose in the world (a (4, 4) world_from_base transform or
(x, y, yaw)).  Ground points therefore sit at z ~ -mount_height.

Organised layout (``organized=True``): (beams, azimuth_samples); row 0 is the highest beam
(elevation fov_up_deg), rows go down linearly to fov_down_deg; column j has azimuth 2*pi*j/H
(counter-clockwise from +x).  Misses, dropouts and returns outside [min_range, max_range] are NaN
points with label -1.  The unorganised output lists the valid returns in that row-major order.

Return model: range += N(0, range_noise); each return is dropped with probability ``dropout``;
intensity = reflectivity[class] * (0.2 + 0.8 * |cos incidence|) + N(0, intensity_noise), clipped
to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frames import as_pose, rotate
from .primitives import cast_rays, tile_order
from .scene import Scene

# per SIM_CLASSES id: ground, wall, table, box, cylinder, sphere, clutter
DEFAULT_REFLECTIVITY = (0.25, 0.55, 0.4, 0.6, 0.7, 0.8, 0.5)


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator, a seed, or None (seed 0)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


@dataclass
class LidarConfig:
    beams: int = 32
    fov_up_deg: float = 15.0
    fov_down_deg: float = -25.0
    azimuth_samples: int = 2048
    max_range: float = 60.0
    min_range: float = 0.3
    range_noise: float = 0.01             # sigma (m)
    dropout: float = 0.02                 # probability a return is lost
    intensity_noise: float = 0.02
    reflectivity: tuple[float, ...] = DEFAULT_REFLECTIVITY
    mount_height: float = 1.0             # lidar origin above the base / ground (m)
    tile: tuple[int, int] = (4, 16)       # ray bundle tile (beams, azimuths) for the caster

    def __post_init__(self) -> None:
        if self.beams < 1 or self.azimuth_samples < 1:
            raise ValueError("beams and azimuth_samples must be >= 1")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError("dropout must be in [0, 1]")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError("need 0 <= min_range < max_range")


class LidarSensor:
    """Casts beams x azimuth_samples rays per sweep against a Scene."""

    def __init__(self, cfg: LidarConfig | None = None):
        self.cfg = cfg = cfg or LidarConfig()
        elev = np.deg2rad(np.linspace(cfg.fov_up_deg, cfg.fov_down_deg, cfg.beams))
        azim = 2 * np.pi * np.arange(cfg.azimuth_samples) / cfg.azimuth_samples
        ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
        dirs = np.stack(np.broadcast_arrays(ce * np.cos(azim), ce * np.sin(azim), se), axis=-1)
        self.directions = dirs.reshape(-1, 3).astype(np.float32)          # (beams*H, 3) lidar frame
        self._order = tile_order(cfg.beams, cfg.azimuth_samples, *cfg.tile)
        self._dirs_tiled = np.ascontiguousarray(self.directions[self._order])
        self._refl = np.asarray(cfg.reflectivity, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        """Organised layout (beams, azimuth_samples)."""
        return self.cfg.beams, self.cfg.azimuth_samples

    def sensor_pose(self, pose) -> np.ndarray:
        """(4, 4) world_from_lidar for a base pose (world_from_base or (x, y, yaw))."""
        mount = np.eye(4)
        mount[2, 3] = self.cfg.mount_height
        return as_pose(pose) @ mount

    def scan(self, scene: Scene, pose=(0.0, 0.0, 0.0), rng: np.random.Generator | int | None = None,
             organized: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One sweep.  Returns points (N, 4) float32 x y z intensity and labels (N,) int32, or with
        organized=True points (beams, H, 4) (NaN rows for no return) and labels (beams, H) (-1)."""
        cfg, rng = self.cfg, as_rng(rng)
        world = self.sensor_pose(pose)
        dirs_w = rotate(self._dirs_tiled, world[:3, :3])
        hits = cast_rays(world[:3, 3], dirs_w, scene.primitives, max_range=cfg.max_range, with_incidence=True)
        n = self.directions.shape[0]
        rng_m = np.empty(n, np.float32)
        cls = np.empty(n, np.int32)
        cos = np.empty(n, np.float32)
        rng_m[self._order], cls[self._order], cos[self._order] = hits.distance, hits.class_id, hits.cos_incidence

        rng_m += rng.standard_normal(n, dtype=np.float32) * np.float32(cfg.range_noise)
        kept = rng.random(n, dtype=np.float32) >= np.float32(cfg.dropout)
        valid = (cls >= 0) & kept & (rng_m >= cfg.min_range) & (rng_m <= cfg.max_range)
        inten_noise = rng.standard_normal(n, dtype=np.float32) * np.float32(cfg.intensity_noise)

        idx = np.flatnonzero(valid)
        refl = self._refl[np.minimum(cls[idx], len(self._refl) - 1)]
        inten = np.clip(refl * (0.2 + 0.8 * cos[idx]) + inten_noise[idx], 0.0, 1.0)
        pts = np.empty((idx.size, 4), np.float32)
        pts[:, :3] = self.directions[idx] * rng_m[idx, None]
        pts[:, 3] = inten
        if not organized:
            return pts, cls[idx]
        grid = np.full((n, 4), np.nan, np.float32)
        labels = np.full(n, -1, np.int32)
        grid[idx], labels[idx] = pts, cls[idx]
        return grid.reshape(*self.shape, 4), labels.reshape(self.shape)

