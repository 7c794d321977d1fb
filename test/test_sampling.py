"""Farthest point sampling, kNN and gather against brute-force numpy references."""
import numpy as np
import pytest
import torch

from foundry_core.models import sampling
from foundry_core.models.sampling import farthest_point_sample, gather_points, knn


def _cloud(b, n, seed, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(b, n, 3))).to(dtype)


def numpy_fps(pts: np.ndarray, s: int, start: int) -> np.ndarray:
    """Textbook FPS on one cloud (N, 3), float64."""
    pts = pts.astype(np.float64)
    chosen = [start]
    dist = np.full(len(pts), np.inf)
    for _ in range(s - 1):
        dist = np.minimum(dist, ((pts - pts[chosen[-1]]) ** 2).sum(-1))
        chosen.append(int(dist.argmax()))
    return np.array(chosen)


def assert_valid_fps(pts: np.ndarray, idx: np.ndarray, rtol: float = 1e-5) -> None:
    """Every index after the first maximises the min distance to the already chosen ones (ties allowed)."""
    pts = pts.astype(np.float64)
    assert len(set(idx.tolist())) == len(idx), "FPS repeated an index while unused points remained"
    dist = ((pts - pts[idx[0]]) ** 2).sum(-1)
    for j in range(1, len(idx)):
        best = dist.max()
        assert dist[idx[j]] >= best * (1 - rtol) - 1e-12, f"step {j}: {dist[idx[j]]} < max {best}"
        dist = np.minimum(dist, ((pts - pts[idx[j]]) ** 2).sum(-1))


@pytest.mark.parametrize("n,seed", [(50, 0), (97, 1), (143, 2), (200, 3)])
def test_fps_torch_matches_numpy(n, seed):
    pts = _cloud(3, n, seed)
    start = torch.tensor([0, n // 2, n - 1])
    idx = farthest_point_sample(pts, 24, start_idx=start, method="torch")
    assert idx.shape == (3, 24) and idx.dtype == torch.int64
    for b in range(3):
        ref = numpy_fps(pts[b].numpy(), 24, int(start[b]))
        np.testing.assert_array_equal(idx[b].numpy(), ref)


@pytest.mark.parametrize("n,seed", [(50, 10), (128, 11), (200, 12)])
def test_fps_fpsample_exact_matches_torch(n, seed):
    pts = _cloud(3, n, seed, torch.float32)
    start = torch.tensor([3, 0, n - 2])
    a = farthest_point_sample(pts, 32, start_idx=start, method="torch")
    b = farthest_point_sample(pts, 32, start_idx=start, method="fpsample_exact")
    assert b.dtype == torch.int64
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("n,seed", [(50, 20), (111, 21), (200, 22)])
def test_fps_quickfps_is_a_valid_fps_sequence(n, seed):
    pts = _cloud(3, n, seed, torch.float32)
    idx = farthest_point_sample(pts, 32, start_idx=torch.tensor([0, 1, 2]), method="fpsample")
    assert idx.shape == (3, 32)
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    for b in range(3):
        assert_valid_fps(pts[b].numpy(), idx[b].numpy())


def test_fps_auto_uses_fpsample_above_threshold(monkeypatch):
    calls = []
    real_torch, real_fp = sampling.fps_torch, sampling.fps_fpsample
    monkeypatch.setattr(sampling, "FAST_FPS_MIN_POINTS", 64)
    monkeypatch.setattr(sampling, "fps_torch", lambda *a, **k: calls.append("torch") or real_torch(*a, **k))
    monkeypatch.setattr(sampling, "fps_fpsample",
                        lambda *a, **k: calls.append(("fpsample", k.get("exact_start", False))) or real_fp(*a, **k))
    start = torch.tensor([0, 5])
    big = _cloud(2, 64, 30, torch.float32)
    out = farthest_point_sample(big, 16, start_idx=start, method="auto")
    assert calls == [("fpsample", False)]
    torch.testing.assert_close(out, farthest_point_sample(big, 16, start_idx=start, method="fpsample"))
    calls.clear()
    small = _cloud(2, 63, 31, torch.float32)     # below: the vanilla kernel, index for index the torch loop's
    out = farthest_point_sample(small, 16, start_idx=start, method="auto")
    assert calls == [("fpsample", True)]
    torch.testing.assert_close(out, farthest_point_sample(small, 16, start_idx=start, method="torch"))


@pytest.mark.parametrize("method", ["torch", "fpsample_exact", "fpsample", "auto"])
def test_fps_fewer_points_than_samples_repeats(method):
    n, s = 10, 25
    pts = _cloud(2, n, 40, torch.float32)
    idx = farthest_point_sample(pts, s, generator=torch.Generator().manual_seed(0), method=method)
    assert idx.shape == (2, s)
    for b in range(2):
        row = idx[b].tolist()
        assert sorted(row[:n]) == list(range(n))          # every point once, then cycle
        assert all(row[j] == row[j % n] for j in range(s))


def test_fps_quickfps_tiny_cloud_does_not_error():
    pts = _cloud(1, 5, 41, torch.float32)
    idx = farthest_point_sample(pts, 8, start_idx=torch.tensor([0]), method="fpsample")
    assert sorted(idx[0, :5].tolist()) == list(range(5))


def test_fps_seeded_generator():
    pts = _cloud(3, 200, 50, torch.float32)
    run = lambda seed: farthest_point_sample(pts, 16, generator=torch.Generator().manual_seed(seed), method="torch")
    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    starts = {tuple(run(seed)[:, 0].tolist()) for seed in range(5)}
    assert len(starts) > 1
    assert not torch.equal(run(0)[:, 0], run(1)[:, 0])


def test_fps_errors():
    with pytest.raises(ValueError, match="empty"):
        farthest_point_sample(torch.zeros(1, 0, 3), 4)
    with pytest.raises(ValueError, match="unknown FPS method"):
        farthest_point_sample(torch.zeros(1, 4, 3), 2, method="bogus")


def numpy_knn(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    d = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n,m,k,seed", [(60, 10, 8, 0), (150, 33, 16, 1), (200, 7, 1, 2)])
def test_knn_torch_matches_numpy(n, m, k, seed):
    pts, qs = _cloud(2, n, seed), _cloud(2, m, seed + 100)
    idx = knn(pts, qs, k, method="torch")
    assert idx.shape == (2, m, k) and idx.dtype == torch.int64
    for b in range(2):
        ref = numpy_knn(pts[b].numpy(), qs[b].numpy(), k)
        np.testing.assert_array_equal(idx[b].numpy(), ref)   # float64 random data: no ties, order is exact


@pytest.mark.parametrize("n,m,k,seed", [(60, 10, 8, 3), (200, 40, 16, 4), (90, 5, 1, 5)])
def test_knn_kdtree_matches_torch(n, m, k, seed):
    pts, qs = _cloud(2, n, seed, torch.float32), _cloud(2, m, seed + 100, torch.float32)
    a = knn(pts, qs, k, method="torch")
    b = knn(pts, qs, k, method="kdtree")
    assert b.shape == (2, m, k) and b.dtype == torch.int64
    for bi in range(2):
        for q in range(m):
            assert set(a[bi, q].tolist()) == set(b[bi, q].tolist())
    # nearest first in both
    d = ((gather_points(pts, b) - qs.unsqueeze(2)) ** 2).sum(-1)
    assert bool((d[..., 1:] >= d[..., :-1]).all())


def test_knn_queries_on_points_find_themselves():
    pts = _cloud(1, 80, 6, torch.float32)
    for method in ("torch", "kdtree"):
        assert knn(pts, pts, 4, method=method)[0, :, 0].tolist() == list(range(80))


@pytest.mark.parametrize("method", ["torch", "kdtree", "auto"])
def test_knn_fewer_points_than_k_repeats_cyclically(method):
    pts = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]])
    qs = torch.tensor([[[0.1, 0, 0], [2.9, 0, 0]]])
    idx = knn(pts, qs, 8, method=method)
    assert idx.shape == (1, 2, 8)
    assert idx[0, 0].tolist() == [0, 1, 2] * 2 + [0, 1]
    assert idx[0, 1].tolist() == [2, 1, 0] * 2 + [2, 1]


def test_knn_auto_uses_kdtree_above_threshold(monkeypatch):
    calls = []
    real = sampling.knn_kdtree
    monkeypatch.setattr(sampling, "FAST_KNN_MIN_POINTS", 32)
    monkeypatch.setattr(sampling, "knn_kdtree", lambda *a: calls.append(1) or real(*a))
    knn(_cloud(1, 32, 7, torch.float32), _cloud(1, 4, 8, torch.float32), 3)
    assert calls == [1]
    knn(_cloud(1, 31, 7, torch.float32), _cloud(1, 4, 8, torch.float32), 3)
    assert calls == [1]


def test_knn_errors():
    with pytest.raises(ValueError, match="empty"):
        knn(torch.zeros(1, 0, 3), torch.zeros(1, 2, 3), 2)
    with pytest.raises(ValueError, match="unknown kNN method"):
        knn(torch.zeros(1, 4, 3), torch.zeros(1, 2, 3), 2, method="ball")


def test_gather_points_shapes_and_values():
    x = torch.arange(2 * 7 * 4, dtype=torch.float32).reshape(2, 7, 4)
    idx2 = torch.tensor([[0, 6, 3], [1, 1, 5]])
    out2 = gather_points(x, idx2)
    assert out2.shape == (2, 3, 4)
    torch.testing.assert_close(out2[1, 2], x[1, 5])
    idx3 = torch.randint(0, 7, (2, 5, 6), generator=torch.Generator().manual_seed(0))
    out3 = gather_points(x, idx3)
    assert out3.shape == (2, 5, 6, 4)
    for b in range(2):
        torch.testing.assert_close(out3[b], x[b][idx3[b]])
