"""A deterministic stream of sensor frames from a robot moving through one scene.

    stream = SensorStream(generate_scene(0), LidarSensor(), rate_hz=10.0, num_frames=50, seed=1)
    for frame in stream:            # SimFrame(index, stamp_s, points, labels, pose)
        ...

Frame i is taken at stamp_s = start_s + i / rate_hz with the base at ``path.pose_at(stamp_s)`` and
noise drawn from ``np.random.default_rng([seed, i])``, so any frame can be recomputed alone
(``stream.frame(i)``) and equals the one iteration yields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Union

import numpy as np

from .depth_camera import DepthCamera
from .lidar import LidarSensor
from .scene import Scene
from .trajectory import CirclePath

Sensor = Union[LidarSensor, DepthCamera]


class Path(Protocol):
    def pose_at(self, t: float) -> np.ndarray: ...


@dataclass
class SimFrame:
    """One capture.  points/labels as returned by the sensor (LiDAR: (N, 4) x y z intensity and (N,),
    or organised; depth camera: (H, W, 3) and (H, W)), in the sensor frame; pose: (4, 4) float64
    world_from_sensor at capture time (p_world = pose[:3, :3] @ p + pose[:3, 3])."""

    index: int
    stamp_s: float
    points: np.ndarray
    labels: np.ndarray
    pose: np.ndarray


class SensorStream:
    """Frames of `scene` seen by `sensor` moving along `path` (default: CirclePath()) at rate_hz.
    num_frames=None streams forever; pregenerate=True computes the num_frames frames up front."""

    def __init__(self, scene: Scene, sensor: Sensor | None = None, rate_hz: float = 10.0,
                 path: Path | None = None, seed: int = 0, num_frames: int | None = None,
                 start_s: float = 0.0, organized: bool = False, pregenerate: bool = False):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if num_frames is not None and num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        self.scene = scene
        self.sensor = sensor if sensor is not None else LidarSensor()
        self.rate_hz = float(rate_hz)
        self.path = path if path is not None else CirclePath()
        self.seed = int(seed)
        self.num_frames = num_frames
        self.start_s = float(start_s)
        self.organized = organized
        self.frames: list[SimFrame] | None = None
        if pregenerate:
            if num_frames is None:
                raise ValueError("pregenerate=True needs num_frames")
            self.frames = [self.frame(i) for i in range(num_frames)]

    def stamp(self, index: int) -> float:
        return self.start_s + index / self.rate_hz

    def frame(self, index: int) -> SimFrame:
        """Frame `index` (computed, or taken from the pre-generated list)."""
        if self.frames is not None and 0 <= index < len(self.frames):
            return self.frames[index]
        stamp = self.stamp(index)
        base = self.path.pose_at(stamp)
        rng = np.random.default_rng([self.seed, index])
        if isinstance(self.sensor, DepthCamera):
            points, labels = self.sensor.capture(self.scene, base, rng)
        else:
            points, labels = self.sensor.scan(self.scene, base, rng, organized=self.organized)
        return SimFrame(index=index, stamp_s=stamp, points=points, labels=labels,
                        pose=self.sensor.sensor_pose(base))

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("an endless SensorStream (num_frames=None) has no length")
        return self.num_frames

    def __iter__(self) -> Iterator[SimFrame]:
        i = 0
        while self.num_frames is None or i < self.num_frames:
            yield self.frame(i)
            i += 1

