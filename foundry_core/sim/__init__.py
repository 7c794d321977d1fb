"""Simulated sensors over procedural scenes: the embedded, download-free default data.

World frame z up, ground at z = 0 (see ``frames`` for all conventions).  Everything is numpy only
and deterministic by seed.

    scene = generate_scene(seed=0)                          # primitives with class ids (SIM_CLASSES)
    points, labels = LidarSensor().scan(scene, (0, 0, 0), rng=1)    # (N, 4) x y z intensity, (N,)
    xyz, labels = DepthCamera().capture(scene, (0, 0, 0), rng=1)    # (H, W, 3) NaN, (H, W) -1
    for frame in SensorStream(scene, LidarSensor(), rate_hz=10, num_frames=20): ...

The data source built on it (captures as a ShapeSet for scene segmentation) is
``foundry_core.data.sim_scenes``; this package does not import ``foundry_core.data``.
"""
from .depth_camera import DepthCamera, DepthCameraConfig
from .frames import BODY_FROM_OPTICAL, as_pose, planar_pose, rotate, transform_points
from .lidar import LidarConfig, LidarSensor
from .primitives import Box, Cylinder, Plane, Primitive, RayHits, Sphere, cast_rays, direction_order, tile_order
from .scene import SIM_CLASSES, Scene, SceneConfig, generate_scene
from .stream import SensorStream, SimFrame
from .trajectory import CirclePath, LinePath

__all__ = [
    "SIM_CLASSES", "Scene", "SceneConfig", "generate_scene",
    "Plane", "Box", "Cylinder", "Sphere", "Primitive", "RayHits", "cast_rays", "tile_order", "direction_order",
    "LidarConfig", "LidarSensor", "DepthCameraConfig", "DepthCamera",
    "SensorStream", "SimFrame", "CirclePath", "LinePath",
    "planar_pose", "as_pose", "rotate", "transform_points", "BODY_FROM_OPTICAL",
]
