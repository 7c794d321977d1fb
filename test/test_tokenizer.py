"""PointTokenizer: shapes, relative groups, robustness to NaN/Inf, tiny and duplicated clouds."""
import functools

import pytest
import torch

from foundry_core.models.sampling import gather_points
from foundry_core.models.tokenizer import PointTokenizer, sanitize_points

B, N, C, K, DIM = 2, 256, 16, 8, 32


@functools.lru_cache(maxsize=None)
def _tok(in_channels=3, c=C, k=K):
    """Eval-mode tokenizer (cached: construction dominates the cost of these tests)."""
    torch.manual_seed(0)
    return PointTokenizer(DIM, num_groups=c, group_size=k, in_channels=in_channels).eval()


def _points(b=B, n=N, ch=3, seed=0):
    return torch.randn(b, n, ch, generator=torch.Generator().manual_seed(seed))


def _finite(t):
    for name in ("tokens", "pos", "centers", "groups"):
        assert bool(torch.isfinite(getattr(t, name)).all()), name


def test_output_shapes():
    t = _tok()(_points(), generator=torch.Generator().manual_seed(1))
    assert t.tokens.shape == (B, C, DIM)
    assert t.pos.shape == (B, C, DIM)
    assert t.centers.shape == (B, C, 3)
    assert t.center_idx.shape == (B, C) and t.center_idx.dtype == torch.int64
    assert t.group_idx.shape == (B, C, K) and t.group_idx.dtype == torch.int64
    assert t.groups.shape == (B, C, K, 3)
    _finite(t)


def test_num_groups_override():
    t = _tok()(_points(), num_groups=5)
    assert t.tokens.shape == (B, 5, DIM) and t.group_idx.shape == (B, 5, K)


def test_groups_are_relative_to_centers():
    pts = _points()
    t = _tok()(pts, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(t.centers, gather_points(pts, t.center_idx))
    torch.testing.assert_close(t.groups + t.centers.unsqueeze(2), gather_points(pts, t.group_idx))
    # centers are FPS samples: distinct points, each center is its own nearest neighbour
    assert all(len(set(row.tolist())) == C for row in t.center_idx)
    torch.testing.assert_close(t.group_idx[..., 0], t.center_idx)
    assert bool((t.groups[:, :, 0] == 0).all())


def _nan_cloud(seed):
    pts = _points(seed=seed)
    pts[:, ::4] = float("nan")
    pts[0, 1, 2] = float("inf")
    pts[1, 2, 0] = -float("inf")
    return pts


@pytest.mark.parametrize("seed", range(3))
def test_non_finite_rows_do_not_leak_into_outputs(seed):
    pts = _nan_cloud(seed)
    finite = torch.isfinite(pts).all(-1)
    t = _tok()(pts, generator=torch.Generator().manual_seed(seed))
    _finite(t)
    # every center and every group member coincides with a finite point of the input cloud
    neighbours = t.groups + t.centers.unsqueeze(2)
    for b in range(B):
        good = pts[b][finite[b]]
        for p in torch.cat([t.centers[b], neighbours[b].reshape(-1, 3)]):
            assert bool(((good - p).abs().amax(-1) < 1e-6).any())


def test_non_finite_rows_are_never_selected_by_index():
    bad_hits = 0
    for seed in range(3):
        pts = _nan_cloud(seed)
        finite = torch.isfinite(pts).all(-1)
        t = _tok()(pts, generator=torch.Generator().manual_seed(seed))
        bad_hits += int((~torch.gather(finite, 1, t.center_idx)).sum())
        bad_hits += int((~torch.gather(finite, 1, t.group_idx.flatten(1))).sum())
    assert bad_hits == 0


def test_all_nan_cloud_raises_naming_it():
    pts = _points(b=3)
    pts[1] = float("nan")
    with pytest.raises(ValueError, match=r"\[1\]"):
        _tok()(pts)
    pts = _points(b=3)
    pts[2, :, 0] = float("inf")
    with pytest.raises(ValueError, match=r"\[2\].*no finite point"):
        _tok()(pts)


def test_fewer_points_than_group_size():
    pts = _points(n=5, seed=3)
    t = _tok()(pts)
    assert t.group_idx.shape == (B, C, K) and t.center_idx.shape == (B, C)
    _finite(t)
    for b in range(B):
        assert set(t.center_idx[b].tolist()) == set(range(5))
        assert all(set(g.tolist()) == set(range(5)) for g in t.group_idx[b])


def test_duplicated_points():
    base = _points(n=20, seed=4)
    pts = base.repeat(1, 8, 1)   # every point 8 times
    t = _tok()(pts)
    _finite(t)
    torch.testing.assert_close(t.groups + t.centers.unsqueeze(2), gather_points(pts, t.group_idx))
    same = torch.zeros(1, 64, 3) + torch.tensor([1.0, -2.0, 0.5])   # a single repeated point
    t = _tok()(same)
    _finite(t)
    assert bool((t.groups == 0).all())


def test_training_mode_duplicated_points_finite():
    torch.manual_seed(0)
    tok = PointTokenizer(DIM, num_groups=C, group_size=K).train()
    t = tok(torch.ones(2, 30, 3))
    _finite(t)


def test_extra_channels():
    pts = _points(ch=4, seed=5)
    t = _tok(in_channels=4)(pts)
    assert t.groups.shape == (B, C, K, 4) and t.tokens.shape == (B, C, DIM)
    gathered = gather_points(pts, t.group_idx)
    torch.testing.assert_close(t.groups[..., 3], gathered[..., 3])           # features carried unchanged
    torch.testing.assert_close(t.groups[..., :3] + t.centers.unsqueeze(2), gathered[..., :3])
    _finite(t)


@pytest.mark.parametrize("shape", [(B, N, 4), (B, N, 2), (N, 3)])
def test_wrong_channel_count_raises(shape):
    with pytest.raises(ValueError, match="tokenizer expects points"):
        _tok()(torch.zeros(shape))


def test_sanitize_points_keeps_finite_rows():
    pts = _points(ch=4, seed=6)
    same, source = sanitize_points(pts)
    assert same is pts and source is None
    bad = pts.clone()
    bad[0, 3] = float("nan")
    bad[1, 10:20, 3] = float("inf")
    finite = torch.isfinite(bad).all(-1)
    out, source = sanitize_points(bad, torch.Generator().manual_seed(0))
    assert out.shape == bad.shape
    assert torch.equal(torch.gather(bad.nan_to_num(7.0), 1, source.unsqueeze(-1).expand_as(bad)), out.nan_to_num(7.0))
    assert bool(finite.gather(1, source).all())          # every source row is finite
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[finite], bad[finite])
    for b in range(2):   # replaced rows are copies of finite rows of the same cloud
        good = bad[b][finite[b]]
        for row in out[b][~finite[b]]:
            assert bool((good == row).all(-1).any())


@pytest.mark.parametrize("train", [False, True])
def test_minipointnet_split_first_layer_equals_concatenated_input(train):
    from foundry_core.models.tokenizer import MiniPointNet
    torch.manual_seed(0)
    net = MiniPointNet(4, 48).train(train)
    with torch.no_grad():
        net.second.bn.running_mean.uniform_(-1, 1)
        net.second.bn.running_var.uniform_(0.5, 2)
    groups = torch.randn(3, 7, 5, 4)
    f = net.first(groups)
    g = f.max(dim=2, keepdim=True).values
    reference = net.second(torch.cat([g.expand_as(f), f], dim=-1)).max(dim=2).values
    torch.testing.assert_close(net(groups), reference, atol=1e-5, rtol=1e-5)
