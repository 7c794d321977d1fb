"""Tests for augmentations and the PointCloudDataset."""
import math

import numpy as np
import pytest
import torch

from foundry_core.data.augment import (AUGMENTATION_NAMES, BeamJitter, Compose, Jitter, NormalizeUnitSphere,
                                       PointDropout, RandomMirror, RandomRotateUp, RandomScale, RandomTilt,
                                       TerrainWarp, build_augmentation)
from foundry_core.data.point_dataset import PointCloudDataset
from foundry_core.data.shapeset import ShapeSet


def _cloud(n=200, f=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3 + f)).astype(np.float32)


def _sphere_with_normals(n=300, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.concatenate([u, u], axis=1).astype(np.float32)


def test_scale_bounds_and_isotropic():
    p = _cloud()
    for s in range(20):
        q, _ = RandomScale(0.8, 1.2)(p, np.random.default_rng(s))
        ratio = q[:, :3] / p[:, :3]
        assert np.all(ratio >= 0.8 - 1e-5) and np.all(ratio <= 1.2 + 1e-5)
        np.testing.assert_array_equal(q[:, 3:], p[:, 3:])
        assert q.dtype == np.float32
    q, _ = RandomScale(0.5, 2.0, anisotropic=False)(p, np.random.default_rng(1))
    r = q[:, :3] / p[:, :3]
    np.testing.assert_allclose(r, r[0, 0], rtol=1e-5)


def test_scale_transforms_normals():
    p = _sphere_with_normals()
    q, _ = RandomScale(0.5, 2.0, normals=True)(p, np.random.default_rng(3))
    s = q[0, :3] / p[0, :3]
    expect = q[:, :3] / s ** 2  # ellipsoid normal ~ x / s^2
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(q[:, 3:6], expect, atol=1e-5)


def test_rotation_preserves_norms_and_up():
    p = _sphere_with_normals() * np.float32(2.0)
    p[:, 3:] /= 2.0
    q, _ = RandomRotateUp(normals=True)(p, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(q[:, :3], axis=1), np.linalg.norm(p[:, :3], axis=1), rtol=1e-5)
    np.testing.assert_allclose(q[:, 2], p[:, 2], atol=1e-6)
    np.testing.assert_allclose(q[:, 3:6], q[:, :3] / 2.0, atol=1e-5)  # normals rotated with points
    assert not np.allclose(q[:, :2], p[:, :2])
    q, _ = RandomRotateUp(axis=0, max_angle=0.1)(p, np.random.default_rng(0))
    np.testing.assert_allclose(q[:, 0], p[:, 0], atol=1e-6)
    cos = (q[:, 1:3] * p[:, 1:3]).sum(1) / np.linalg.norm(p[:, 1:3], axis=1) ** 2
    assert np.all(cos >= math.cos(0.1) - 1e-5)


def test_mirror():
    p = _sphere_with_normals()
    flips = set()
    for s in range(16):
        q, _ = RandomMirror(axes=(0, 1), p=0.5, normals=True)(p, np.random.default_rng(s))
        np.testing.assert_allclose(np.abs(q), np.abs(p))
        np.testing.assert_array_equal(q[:, 2], p[:, 2])
        np.testing.assert_array_equal(q[:, 3:6], q[:, :3])
        flips.add(tuple(np.sign(q[0, :2] * p[0, :2]).astype(int)))
    assert len(flips) == 4


def test_jitter_clip_and_channels():
    p = _cloud()
    q, _ = Jitter(sigma=0.5, clip=0.05)(p, np.random.default_rng(0))
    d = q[:, :3] - p[:, :3]
    assert np.abs(d).max() <= 0.05 + 1e-6 and np.abs(d).max() > 0.04
    np.testing.assert_array_equal(q[:, 3:], p[:, 3:])


def test_dropout_keeps_seg_aligned():
    n = 256
    p = np.zeros((n, 4), dtype=np.float32)
    p[:, 0] = np.arange(n)
    seg = np.arange(n, dtype=np.int64)
    saw_drop = False
    for s in range(20):
        q, sq = PointDropout(0.875)(p, np.random.default_rng(s), seg)
        assert q.shape == p.shape and sq.shape == seg.shape
        np.testing.assert_array_equal(q[:, 0].astype(np.int64), sq)  # labels follow their points
        idx = PointDropout(0.875).index(n, np.random.default_rng(s))
        np.testing.assert_array_equal(sq, idx)
        dropped = idx != np.arange(n)
        if dropped.any():
            saw_drop = True
            first_kept = np.flatnonzero(~dropped)[0]
            assert (idx[dropped] == first_kept).all()
    assert saw_drop


def test_normalize_unit_sphere():
    p = _cloud() * 5 + 3
    q, _ = NormalizeUnitSphere()(p, np.random.default_rng(0))
    np.testing.assert_allclose(q[:, :3].mean(0), 0, atol=1e-5)
    assert np.linalg.norm(q[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(q[:, 3:], p[:, 3:])



def _floor(n=4000, seed=0, height=-1.0):
    """A flat floor z = height around a sensor at the origin, (N, 3)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-20, 20, size=(n, 2))
    return np.concatenate([xy, np.full((n, 1), height)], axis=1).astype(np.float32)


def test_tilt_is_a_rotation_about_a_horizontal_axis_within_the_bound():
    p = _sphere_with_normals()
    p = np.concatenate([p[:, :3] * 5, p[:, 3:]], axis=1).astype(np.float32)
    a, _ = RandomTilt(max_deg=4.0, normals=True)(p, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(a[:, :3], axis=1), np.linalg.norm(p[:, :3], axis=1), rtol=1e-5)
    np.testing.assert_allclose(a[:, 3:6], a[:, :3] / 5, atol=1e-5)          # normals turn with the points
    floor, _ = RandomTilt(max_deg=4.0)(_floor(), np.random.default_rng(2))
    normal = np.linalg.svd(floor - floor.mean(0))[2][2]                   # the tilted floor's normal
    angle = math.degrees(math.acos(abs(normal[2])))
    assert 0.0 < angle <= 4.0 + 1e-6
    assert np.ptp(floor[:, 2]) > 0.1                                      # no longer level


def test_terrain_warp_moves_only_z_smoothly_and_boundedly():
    f = _floor()
    a, seg = TerrainWarp(max_amp=0.12, waves=3)(f, np.random.default_rng(3), np.arange(len(f)))
    np.testing.assert_array_equal(a[:, :2], f[:, :2])
    np.testing.assert_array_equal(seg, np.arange(len(f)))
    dz = a[:, 2] - f[:, 2]
    assert np.abs(dz).max() <= 3 * 0.12 + 1e-6 and dz.std() > 0.005
    order = np.argsort(f[:, 0])                                           # smooth: nearby points move alike
    close = np.hypot(*(f[order][1:, :2] - f[order][:-1, :2]).T) < 0.05
    assert np.abs(np.diff(dz[order]))[close].max() < 0.05


def test_beam_jitter_shifts_each_beam_by_one_elevation_offset():
    elev = np.radians(np.repeat([-20.2, -10.2, -5.0], 500))                # three beams (0.4 deg bins)
    az = np.random.default_rng(0).uniform(0, 2 * np.pi, len(elev))
    r = np.random.default_rng(1).uniform(2, 30, len(elev))
    p = np.stack([r * np.cos(elev) * np.cos(az), r * np.cos(elev) * np.sin(az), r * np.sin(elev)], 1).astype(np.float32)
    a, _ = BeamJitter(max_sigma_deg=0.5)(p, np.random.default_rng(4))
    np.testing.assert_array_equal(a[:, :2], p[:, :2])
    new_el = np.degrees(np.arctan2(a[:, 2], np.hypot(a[:, 0], a[:, 1])))
    shift = np.tan(np.radians(new_el)) - np.tan(elev)                     # = tan(offset) per beam
    per_beam = shift.reshape(3, 500)
    np.testing.assert_allclose(per_beam, per_beam[:, :1].repeat(500, 1), atol=1e-5)
    assert np.abs(per_beam[:, 0]).max() > 0


def test_sim_to_real_augmentations_by_name_and_bad_parameters():
    assert {"tilt", "terrain", "beam_jitter"} <= set(AUGMENTATION_NAMES)
    with pytest.raises(ValueError):
        RandomTilt(max_deg=-1)
    with pytest.raises(ValueError):
        TerrainWarp(wavelength=(5.0, 2.0))
    with pytest.raises(ValueError):
        BeamJitter(beam_deg=0)

def test_compose_reproducible_and_pure():
    p = _cloud()
    seg = np.arange(len(p))
    aug = build_augmentation(["scale", "mirror", "rotate_up", "jitter", "dropout"])
    assert isinstance(aug, Compose) and len(aug) == 5
    keep = p.copy()
    a, sa = aug(p, np.random.default_rng(5), seg)
    b, sb = aug(p, np.random.default_rng(5), seg)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(p, keep)  # input untouched
    c, _ = aug(p, np.random.default_rng(6), seg)
    assert not np.array_equal(a, c)


def test_build_augmentation_unknown_name():
    with pytest.raises(ValueError) as e:
        build_augmentation(["scale", "warp"])
    assert "warp" in str(e.value) and all(n in str(e.value) for n in AUGMENTATION_NAMES)


# ------------------------------------------------------------------ dataset

def _shapes(sizes=(50, 10, 300), with_nan=False):
    rng = np.random.default_rng(0)
    pts = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    seg = [np.arange(n, dtype=np.int64) for n in sizes]
    for p, s in zip(pts, seg):  # encode the point index in the features so alignment is checkable
        p[:, 0] = s
    if with_nan:
        pts[0][::2, 1] = np.nan
    return ShapeSet(points=pts, labels=np.arange(len(sizes)) % 2, classes=["a", "b"], seg=seg)


def test_dataset_item_types_and_resampling():
    ds = PointCloudDataset(_shapes(), num_points=64, with_seg=True)
    for i in range(len(ds)):
        it = ds[i]
        assert it["points"].shape == (64, 3) and it["points"].dtype == torch.float32
        assert it["label"].dtype == torch.int64 and it["label"].ndim == 0
        assert it["seg"].shape == (64,) and it["seg"].dtype == torch.int64
        assert int(it["category"]) == int(it["label"]) == i % 2
        np.testing.assert_array_equal(it["points"][:, 0].long().numpy(), it["seg"].numpy())
    # larger cloud: subset without replacement
    assert len(np.unique(ds[2]["seg"].numpy())) == 64
    # fewer points than requested: every original point kept, rest duplicated
    s1 = ds[1]["seg"].numpy()
    assert set(s1) == set(range(10))


def test_dataset_drops_nan_rows():
    ds = PointCloudDataset(_shapes(with_nan=True), num_points=40, with_seg=True)
    it = ds[0]
    assert torch.isfinite(it["points"]).all()
    assert (it["seg"] % 2 == 1).all()  # even rows were NaN
    np.testing.assert_array_equal(it["points"][:, 0].long().numpy(), it["seg"].numpy())


def test_dataset_all_nan_raises():
    shapes = _shapes()
    shapes.points[1][:] = np.nan
    ds = PointCloudDataset(shapes, num_points=16)
    ds[0]
    with pytest.raises(ValueError, match="cloud 1"):
        ds[1]


def test_set_epoch_train_and_eval_determinism():
    shapes = _shapes()
    train = PointCloudDataset(shapes, num_points=32, augment=build_augmentation(["jitter", "rotate_up"]), seed=4)
    a0 = train[2]["points"]
    np.testing.assert_array_equal(a0, train[2]["points"])
    train.set_epoch(1)
    a1 = train[2]["points"]
    assert not torch.equal(a0, a1)
    train.set_epoch(0)
    assert torch.equal(a0, train[2]["points"])
    again = PointCloudDataset(shapes, num_points=32, augment=build_augmentation(["jitter", "rotate_up"]), seed=4)
    assert torch.equal(a0, again[2]["points"])

    ev = PointCloudDataset(shapes, num_points=32, seed=4)
    e0 = ev[2]["points"]
    ev.set_epoch(3)
    assert torch.equal(e0, ev[2]["points"])  # eval subset fixed across epochs


def test_dataset_with_dataloader_and_synthetic():
    from foundry_core.data.synthetic import generate_shapes
    shapes = generate_shapes(8, num_points=128, seed=0, with_normals=True)
    ds = PointCloudDataset(shapes, num_points=96, with_seg=True,
                           augment=build_augmentation(["scale", "rotate_up", "dropout"], normals=True))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["points"].shape == (4, 96, 6) and batch["seg"].shape == (4, 96)
    assert batch["label"].shape == (4,)
    n = batch["points"][..., 3:].norm(dim=-1)
    torch.testing.assert_close(n, torch.ones_like(n), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        PointCloudDataset(ShapeSet(points=shapes.points, labels=shapes.labels, classes=shapes.classes),
                          num_points=8, with_seg=True)
