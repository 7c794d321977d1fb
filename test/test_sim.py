"""foundry_core.sim: ray casting, scenes, LiDAR, depth camera, streams and the sim_scenes data source."""
from __future__ import annotations

import math

import numpy as np
import pytest

from foundry_core.configs import DataConfig
from foundry_core.data.point_dataset import PointCloudDataset
from foundry_core.data.sources import load_splits
from foundry_core.sim import (SIM_CLASSES, Box, Cylinder, DepthCamera, DepthCameraConfig, LidarConfig, LidarSensor,
                              Plane, SceneConfig, SensorStream, Sphere, cast_rays, generate_scene)
from foundry_core.data.sim_scenes import generate_scene_set

SMALL = LidarConfig(beams=16, azimuth_samples=512)


def _cast1(origin, direction, prims, **kw):
    d = np.asarray([direction], dtype=np.float64)
    d /= np.linalg.norm(d)
    hits = cast_rays(np.asarray(origin, dtype=np.float64), d, prims, **kw)
    return float(hits.distance[0]), int(hits.class_id[0]), int(hits.index[0])


# ------------------------------------------------------------------ ray casting
def test_ray_down_hits_ground():
    assert _cast1((1.0, 2.0, 1.5), (0, 0, -1), [Plane(0.0, class_id=0)]) == pytest.approx((1.5, 0, 0))
    assert _cast1((0, 0, 1.5), (1, 0, -1), [Plane(0.0)])[0] == pytest.approx(1.5 * math.sqrt(2), rel=1e-6)


def test_miss_is_inf_and_minus_one():
    t, c, i = _cast1((0, 0, 1.0), (0, 0, 1), [Plane(0.0), Sphere((5, 0, 0), 1.0)])
    assert math.isinf(t) and c == -1 and i == -1
    # finite plane: outside its rectangle is a miss
    assert _cast1((3, 0, 1), (0, 0, -1), [Plane(0.0, half_extent=(1, 1))])[1] == -1
    assert _cast1((0.5, 0, 1), (0, 0, -1), [Plane(0.0, half_extent=(1, 1))])[1] == 0


def test_sphere_hit_at_center_distance_minus_radius():
    assert _cast1((0, 0, 0), (1, 0, 0), [Sphere((5, 0, 0), 1.0, class_id=5)]) == pytest.approx((4.0, 5, 0))
    assert _cast1((1, 1, 1), (0, 1, 0), [Sphere((1, 6, 1), 0.5)])[0] == pytest.approx(4.5)


def test_nearest_of_two_wins_in_any_order():
    box, ball = Box((3, 0, 0), (0.5, 0.5, 0.5), class_id=3), Sphere((6, 0, 0), 1.0, class_id=5)
    assert _cast1((0, 0, 0), (1, 0, 0), [ball, box]) == pytest.approx((2.5, 3, 1))
    assert _cast1((0, 0, 0), (1, 0, 0), [box, ball]) == pytest.approx((2.5, 3, 0))


def test_box_with_yaw():
    long_y = Box((4, 0, 0), (1.0, 0.2, 1.0), yaw=math.pi / 2)       # now 0.4 m thick along x, 2 m along y
    assert _cast1((0, 0, 0), (1, 0, 0), [long_y])[0] == pytest.approx(3.8, abs=1e-5)
    assert _cast1((4, -3, 0), (0, 1, 0), [long_y])[0] == pytest.approx(2.0, abs=1e-5)
    diamond = Box((5, 0, 0), (1.0, 1.0, 1.0), yaw=math.pi / 4)       # corner points at the ray
    assert _cast1((0, 0, 0), (1, 0, 0), [diamond])[0] == pytest.approx(5 - math.sqrt(2), abs=1e-5)
    assert _cast1((0, 0, 0), (1, 0, 0), [diamond], with_incidence=True)[0] == pytest.approx(5 - math.sqrt(2), abs=1e-5)


def test_cylinder_side_and_cap():
    cyl = Cylinder(3.0, 0.0, 0.5, 0.0, 2.0, class_id=4)
    assert _cast1((0, 0, 1), (1, 0, 0), [cyl]) == pytest.approx((2.5, 4, 0))
    assert _cast1((3, 0, 5), (0, 0, -1), [cyl])[0] == pytest.approx(3.0)
    assert _cast1((0, 0, 2.5), (1, 0, 0), [cyl])[1] == -1                 # passes above it


def test_incidence_and_max_range():
    hits = cast_rays(np.zeros(3), np.array([[0.0, 0.0, -1.0], [0.6, 0.0, -0.8]]), [Plane(-2.0)], with_incidence=True)
    np.testing.assert_allclose(hits.cos_incidence, [1.0, 0.8], atol=1e-6)
    assert cast_rays(np.zeros(3), np.array([[0.0, 0.0, -1.0]]), [Plane(-2.0)], max_range=1.5).class_id[0] == -1


def test_culling_matches_brute_force_with_per_ray_origins():
    scene = generate_scene(5)
    rng = np.random.default_rng(0)
    n = 3000
    origins = np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(0.2, 2.0, n)].astype(np.float32)
    dirs = rng.normal(size=(n, 3)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    brute = np.full(n, np.inf, np.float32)
    for p in scene.primitives:
        brute = np.minimum(brute, p.intersect(origins, dirs))
    for bundle, sort in ((1, False), (64, False), (64, True), (64, None)):
        hits = cast_rays(origins, dirs, scene.primitives, bundle=bundle, sort=sort, with_incidence=True)
        np.testing.assert_array_equal(hits.distance, brute)
        assert np.array_equal(np.isnan(hits.cos_incidence), ~hits.hit)
        assert np.all(hits.cos_incidence[hits.hit] <= 1.0 + 1e-6)


# ------------------------------------------------------------------ scenes
def test_scene_determinism_and_classes():
    assert generate_scene(3).primitives == generate_scene(3).primitives
    assert generate_scene(3).primitives != generate_scene(4).primitives
    seen = set()
    for seed in range(5):
        seen |= set(generate_scene(seed).class_ids().tolist())
    assert seen == set(range(len(SIM_CLASSES)))


def test_scene_keeps_free_disc_empty():
    scene = generate_scene(1)
    pts, labels = LidarSensor(SMALL).scan(scene, (0, 0, 0), 0)
    near = np.hypot(pts[:, 0], pts[:, 1]) < SceneConfig().free_radius - 0.05
    assert near.sum() > 100 and np.all(labels[near] == 0)


# ------------------------------------------------------------------ lidar
def test_lidar_shapes_determinism_and_ranges():
    scene, sensor = generate_scene(0), LidarSensor(SMALL)
    pts, labels = sensor.scan(scene, (0.3, -0.2, 0.5), rng=7)
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 4 and labels.dtype == np.int32
    assert len(pts) == len(labels) > 0.5 * 16 * 512
    assert np.isfinite(pts).all() and labels.min() >= 0 and labels.max() < len(SIM_CLASSES)
    assert 0.0 <= pts[:, 3].min() and pts[:, 3].max() <= 1.0
    again, again_l = sensor.scan(scene, (0.3, -0.2, 0.5), rng=7)
    np.testing.assert_array_equal(pts, again)
    np.testing.assert_array_equal(labels, again_l)
    other, _ = sensor.scan(scene, (0.3, -0.2, 0.5), rng=8)
    assert other.shape != pts.shape or not np.array_equal(other, pts)
    # organised layout holds exactly the same returns, NaN where the label is -1
    grid, glabels = sensor.scan(scene, (0.3, -0.2, 0.5), rng=7, organized=True)
    assert grid.shape == (16, 512, 4) and glabels.shape == (16, 512)
    assert np.array_equal(np.isnan(grid).any(-1), glabels < 0)
    np.testing.assert_array_equal(grid[glabels >= 0], pts)


def test_lidar_max_range_and_ground_height():
    cfg = LidarConfig(beams=16, azimuth_samples=512, max_range=8.0, mount_height=1.2, range_noise=0.01)
    pts, labels = LidarSensor(cfg).scan(generate_scene(2), (0, 0, 1.0), rng=0)
    r = np.linalg.norm(pts[:, :3], axis=1)
    assert r.max() <= 8.0 and r.min() >= cfg.min_range
    ground = pts[labels == 0]
    assert len(ground) > 100
    np.testing.assert_allclose(ground[:, 2], -1.2, atol=0.05)


def test_lidar_dropout_is_proportional():
    scene = generate_scene(0)
    full = len(LidarSensor(LidarConfig(beams=16, azimuth_samples=512, dropout=0.0)).scan(scene, rng=1)[0])
    half = len(LidarSensor(LidarConfig(beams=16, azimuth_samples=512, dropout=0.5)).scan(scene, rng=1)[0])
    assert half / full == pytest.approx(0.5, abs=0.03)


# ------------------------------------------------------------------ depth camera
def test_depth_camera_nan_matches_labels():
    cam = DepthCamera(DepthCameraConfig(width=160, height=120, max_range=6.0))
    xyz, labels = cam.capture(generate_scene(1), (0.2, 0.1, 2.0), rng=3)
    assert xyz.shape == (120, 160, 3) and xyz.dtype == np.float32
    assert labels.shape == (120, 160) and labels.dtype == np.int32
    missing = labels < 0
    assert missing.any() and (~missing).any()
    assert np.array_equal(np.isnan(xyz).any(-1), missing) and np.array_equal(np.isnan(xyz).all(-1), missing)
    valid = xyz[~missing]
    assert valid[:, 2].max() <= 6.0 and valid[:, 2].min() > 0       # z forward = depth
    xyz2, labels2 = cam.capture(generate_scene(1), (0.2, 0.1, 2.0), rng=3)
    np.testing.assert_array_equal(xyz, xyz2)
    np.testing.assert_array_equal(labels, labels2)
    # optical frame: the ground is below the image centre, i.e. +y (down) in the bottom rows
    assert np.nanmean(xyz[-10:, :, 1]) > 0


# ------------------------------------------------------------------ stream
def test_stream_timestamps_and_replay():
    stream = SensorStream(generate_scene(0), LidarSensor(SMALL), rate_hz=10.0, num_frames=4, seed=3)
    frames = list(stream)
    assert [f.index for f in frames] == [0, 1, 2, 3] and len(stream) == 4
    np.testing.assert_allclose(np.diff([f.stamp_s for f in frames]), 0.1)
    replay = stream.frame(2)
    np.testing.assert_array_equal(replay.points, frames[2].points)
    np.testing.assert_array_equal(replay.pose, frames[2].pose)
    assert frames[0].pose[2, 3] == pytest.approx(SMALL.mount_height)
    assert not np.array_equal(frames[0].pose, frames[1].pose)          # it moves
    pre = SensorStream(generate_scene(0), LidarSensor(SMALL), num_frames=2, seed=3, pregenerate=True)
    np.testing.assert_array_equal(pre.frames[1].labels, frames[1].labels)


# ------------------------------------------------------------------ data source
def test_scene_set_classes_and_determinism():
    shapes = generate_scene_set(4, seed=0, sensor="lidar", points_per_cloud=None, lidar={"beams": 16})
    seen = set(np.concatenate(shapes.seg).tolist())
    assert seen == set(range(len(SIM_CLASSES)))
    assert shapes.seg_classes == SIM_CLASSES and shapes.classes == ["scene"]
    a = generate_scene_set(2, seed=1, sensor="mixed", points_per_cloud=512, lidar={"beams": 16},
                           depth={"width": 80, "height": 60})
    b = generate_scene_set(2, seed=1, sensor="mixed", points_per_cloud=512, lidar={"beams": 16},
                           depth={"width": 80, "height": 60})
    for pa, pb in zip(a.points, b.points):
        np.testing.assert_array_equal(pa, pb)
    c = generate_scene_set(2, seed=2, sensor="mixed", points_per_cloud=512, lidar={"beams": 16},
                           depth={"width": 80, "height": 60})
    assert not all(pa.shape == pc.shape and np.array_equal(pa, pc) for pa, pc in zip(a.points, c.points))


def test_sim_scenes_through_load_splits():
    opts = {"num_scenes": 5, "points_per_cloud": 1024, "lidar": {"beams": 16, "azimuth_samples": 1024}}
    cfg = DataConfig(source="sim_scenes", options=opts, num_points=256, with_seg=True, augment=[])
    train, test = load_splits(cfg)
    assert len(train) + len(test) == 5 and len(test) >= 1
    for pts, seg in zip(train.points + test.points, train.seg + test.seg):
        assert pts.dtype == np.float32 and pts.shape[1] == 3 and 0 < len(pts) <= 1024 and len(seg) == len(pts)
        assert np.abs(pts[:, :2]).max() <= 12.0
    assert train.seg_classes == SIM_CLASSES
    item = PointCloudDataset(train, 256, with_seg=True)[0]
    assert tuple(item["points"].shape) == (256, 3) and tuple(item["seg"].shape) == (256,)
    tr, te = load_splits(DataConfig(source="sim_scenes", split="loader", options={**opts, "test_scenes": 2}))
    assert len(tr) == 5 and len(te) == 2
    assert not any(np.array_equal(te.points[0], p) for p in tr.points)


def test_scene_set_with_several_lidars_draws_one_per_capture():
    """lidar as a list: each capture comes from one of the sensors (beam count shows in the point count
    and ground height in the sensor frame shows the mount), and the draw is reproducible."""
    sensors = [{"beams": 8, "azimuth_samples": 256, "mount_height": 1.0},
               {"beams": 24, "azimuth_samples": 256, "mount_height": 1.7}]
    a = generate_scene_set(12, seed=3, points_per_cloud=None, crop=50.0, lidar=sensors)
    b = generate_scene_set(12, seed=3, points_per_cloud=None, crop=50.0, lidar=sensors)
    heights = set()
    for pa, pb, seg in zip(a.points, b.points, a.seg):
        np.testing.assert_array_equal(pa, pb)
        heights.add(round(-float(np.median(pa[seg == 0, 2])), 1))
    assert heights == {1.0, 1.7}
    with pytest.raises(ValueError):
        generate_scene_set(1, lidar=[])
