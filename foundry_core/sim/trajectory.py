"""Smooth robot paths around the origin: base pose (4, 4) world_from_base as a function of time.

Both paths stay inside the object-free disc of the scene for their default parameters
(radius 1 m / half length 1 m < SceneConfig.free_radius 2.5 m).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .frames import planar_pose


@dataclass
class CirclePath:
    """Drive counter-clockwise on a circle of `radius` around `center` at `speed` (m/s), facing along
    the path; starts at angle `phase` (rad)."""

    radius: float = 1.0
    speed: float = 0.5
    center: tuple[float, float] = (0.0, 0.0)
    phase: float = 0.0

    def pose_at(self, t: float) -> np.ndarray:
        a = self.phase + (self.speed * t / self.radius if self.radius > 0 else 0.0)
        x = self.center[0] + self.radius * math.cos(a)
        y = self.center[1] + self.radius * math.sin(a)
        return planar_pose(x, y, a + math.pi / 2)


@dataclass
class LinePath:
    """Shuttle back and forth between `start` and `end` (x, y) at mean `speed` (m/s), easing in and
    out at the ends, facing the direction of travel (the heading flips at the ends)."""

    start: tuple[float, float] = (-1.0, 0.0)
    end: tuple[float, float] = (1.0, 0.0)
    speed: float = 0.5

    def pose_at(self, t: float) -> np.ndarray:
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        length = math.hypot(dx, dy)
        if length == 0:
            return planar_pose(*self.start)
        s = (self.speed * t / length) % 2.0                 # 0..1 outbound, 1..2 back
        f = 0.5 - 0.5 * math.cos(math.pi * s)              # smooth ease at both ends
        yaw = math.atan2(dy, dx) + (0.0 if s < 1.0 else math.pi)
        return planar_pose(self.start[0] + f * dx, self.start[1] + f * dy, yaw)
