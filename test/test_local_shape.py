"""LocalShape descriptors (models/local_shape.py) and the segmentation head that reads them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundry_core.models.backbone import PointBackbone
from foundry_core.models.heads import SegmentationHead
from foundry_core.models.local_shape import LOCAL_SHAPE_DIM, local_shape, local_shape_batch

from support.configs import tiny_model

LIN, PLAN, SCAT, NZ, EXTENT, BELOW, ABOVE = range(LOCAL_SHAPE_DIM)


def _grid(n=20, spacing=0.05):
    u, v = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing)
    return u.ravel(), v.ravel()


def test_descriptors_tell_floor_wall_pole_and_ball_apart():
    u, v = _grid()
    floor = np.stack([u, v, np.zeros_like(u)], 1)
    wall = np.stack([u, np.zeros_like(u), v], 1)
    t = np.linspace(0, 2, 200)
    pole = np.stack([np.zeros_like(t), np.zeros_like(t), t], 1)
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(2000, 3))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True) / 0.1
    f_floor, f_wall = local_shape(floor, 16), local_shape(wall, 16)
    f_pole, f_ball = local_shape(pole, 16), local_shape(ball, 16)
    inner = (u > 0.2) & (u < 0.7) & (v > 0.2) & (v < 0.7)          # away from the borders
    assert np.all(f_floor[inner, PLAN] > 0.5) and np.all(f_floor[inner, SCAT] < 1e-6)
    assert np.all(f_floor[inner, NZ] > 0.999) and np.all(f_wall[inner, NZ] < 1e-3)    # horizontal vs vertical
    assert np.all(f_pole[20:-20, LIN] > 0.999)
    assert np.median(f_ball[:, SCAT]) > 10 * max(np.median(f_floor[inner, SCAT]), 1e-9)   # curved: third axis
    np.testing.assert_allclose(f_floor[:, BELOW], 0.0, atol=1e-6)
    np.testing.assert_allclose(f_floor[:, ABOVE], 0.0, atol=1e-6)
    assert np.all(f_wall[:, BELOW] >= 0) and f_wall[:, ABOVE].max() > 0.05
    assert f_ball.shape == (2000, LOCAL_SHAPE_DIM) and f_ball.dtype == np.float32


def test_descriptors_are_translation_invariant_and_handle_tiny_clouds():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(300, 3)).astype(np.float32)
    np.testing.assert_allclose(local_shape(pts + np.float32([5, -3, 2]), 8), local_shape(pts, 8), atol=1e-3)
    assert local_shape(np.zeros((0, 3)), 8).shape == (0, LOCAL_SHAPE_DIM)
    one = local_shape(np.ones((1, 3)), 8)
    assert one.shape == (1, LOCAL_SHAPE_DIM) and np.all(np.isfinite(one)) and np.all(one == 0)
    few = local_shape(rng.normal(size=(5, 3)), 16)                 # fewer points than k: all of them
    assert few.shape == (5, LOCAL_SHAPE_DIM) and np.all(np.isfinite(few))
    sparse = rng.uniform(-50, 50, size=(40, 3))                    # metres apart: lengths stay capped
    f_sparse = local_shape(sparse, 8)
    assert f_sparse[:, EXTENT:].max() <= 1.0 and f_sparse[:, EXTENT].min() == 1.0
    with pytest.raises(ValueError, match="k must be"):
        local_shape(pts, 0)
    batch = torch.from_numpy(np.stack([pts, pts[::-1].copy()]))
    out = local_shape_batch(batch, 8)
    assert out.shape == (2, 300, LOCAL_SHAPE_DIM)
    torch.testing.assert_close(out[1], out[0].flip(0))


def test_head_reads_local_shape_and_its_folded_path_is_the_same_function():
    torch.manual_seed(0)
    bb = PointBackbone(tiny_model(dim=32, depth=2, num_groups=8)).eval()
    pts = torch.randn(2, 96, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bb(pts, generator=torch.Generator().manual_seed(0))
    head = SegmentationHead(32, 5, [1, 2], hidden=(32, 16), point_geometry=True, local_shape_k=8)
    assert head.geometry_dim == 3 + LOCAL_SHAPE_DIM
    head.train()
    train_logits = head(out, pts)
    train_logits.sum().backward()                                   # the descriptors' weights learn
    w = head.mlp[0].weight.grad[:, -LOCAL_SHAPE_DIM:, 0]
    assert float(w.abs().sum()) > 0
    head.eval()
    with torch.no_grad():
        ref = head(out, pts)                                        # folded path, descriptors from xyz
        given = head(out, pts, point_features=local_shape_batch(pts, 8))
        other = head(out, pts, point_features=torch.rand(2, 96, LOCAL_SHAPE_DIM))
        head.folded_mlp = lambda: None                              # the training-path function in eval mode
        unfolded = head(out, pts)
    torch.testing.assert_close(given, ref)
    torch.testing.assert_close(unfolded, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other, ref)                           # the descriptors change the labels


def test_voxel_scales_keep_the_neighbourhood_size_whatever_the_density():
    """At voxel 0 the k neighbours shrink as the cloud gets denser; at a voxel scale they span about the
    same metres (the support has one point per voxel), and each scale is its own block of columns."""
    rng = np.random.default_rng(2)
    def floor(n):                                                    # n points on a 4 x 4 m floor
        return np.stack([rng.uniform(0, 4, n), rng.uniform(0, 4, n), np.zeros(n)], 1).astype(np.float32)
    sparse, dense = floor(2000), floor(32000)
    f_sparse, f_dense = local_shape(sparse, 16, (0.0, 0.3)), local_shape(dense, 16, (0.0, 0.3))
    assert f_sparse.shape == (2000, 2 * LOCAL_SHAPE_DIM) and f_dense.dtype == np.float32
    np.testing.assert_array_equal(f_sparse[:, :LOCAL_SHAPE_DIM], local_shape(sparse, 16))   # voxel 0 = the points
    ext = EXTENT + LOCAL_SHAPE_DIM
    assert np.median(f_dense[:, EXTENT]) < 0.3 * np.median(f_sparse[:, EXTENT])             # 16x denser: ~1/4
    assert 0.8 < np.median(f_dense[:, ext]) / np.median(f_sparse[:, ext]) < 1.25
    assert np.median(f_dense[:, ext]) > 2 * np.median(f_dense[:, EXTENT])
    assert np.all(f_dense[:, NZ + LOCAL_SHAPE_DIM] > 0.99)                                  # still a floor
    with pytest.raises(ValueError, match="voxels"):
        local_shape(sparse, 16, ())
    with pytest.raises(ValueError, match="voxels"):
        local_shape(sparse, 16, (0.1, -1.0))
    assert local_shape_batch(torch.from_numpy(sparse[None]), 16, (0.0, 0.3)).shape == (1, 2000, 14)


def test_multi_scale_head_width_and_config_checks():
    head = SegmentationHead(32, 5, [1, 2], hidden=(32, 16), point_geometry=True, local_shape_k=8,
                            local_shape_voxels=(0.1, 0.3))
    assert head.local_shape_dim == 2 * LOCAL_SHAPE_DIM and head.geometry_dim == 3 + 2 * LOCAL_SHAPE_DIM
    assert head.mlp[0].in_channels == 32 * 3 + head.geometry_dim
    from foundry_core.configs import FinetuneConfig
    from foundry_core.typed_yaml import ConfigError
    with pytest.raises(ConfigError, match="seg_local_shape_voxels"):
        FinetuneConfig(task="sceneseg", seg_local_shape_k=16, seg_local_shape_voxels=[])
