"""Tests for the procedural labelled-shape generator."""
import numpy as np
import pytest

from foundry_core.data.synthetic import (CLASS_PARTS, SHAPE_CLASSES, _sample_box, _sample_frustum,
                                         generate_shapes)


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(40, num_points=512, seed=3)


def test_classes_and_parts_declared():
    assert len(SHAPE_CLASSES) >= 8
    for c in SHAPE_CLASSES:
        assert 2 <= len(CLASS_PARTS[c]) <= 4


def test_determinism_by_seed():
    a = generate_shapes(12, num_points=128, seed=7, occlusion_prob=0.5)
    b = generate_shapes(12, num_points=128, seed=7, occlusion_prob=0.5)
    c = generate_shapes(12, num_points=128, seed=8, occlusion_prob=0.5)
    for pa, pb, sa, sb in zip(a.points, b.points, a.seg, b.seg):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert any(not np.array_equal(pa, pc) for pa, pc in zip(a.points, c.points))


def test_counts_dtypes_balance(shapes):
    assert len(shapes) == 40
    for p, s in zip(shapes.points, shapes.seg):
        assert p.shape == (512, 3) and p.dtype == np.float32
        assert s.shape == (512,) and s.dtype == np.int64
        assert np.isfinite(p).all()
    counts = np.bincount(shapes.labels, minlength=len(SHAPE_CLASSES))
    assert counts.max() - counts.min() <= 1
    assert shapes.classes == SHAPE_CLASSES


def test_unit_sphere(shapes):
    for p in shapes.points:
        assert np.abs(p.mean(axis=0)).max() < 1e-4
        assert np.linalg.norm(p, axis=1).max() == pytest.approx(1.0, abs=1e-5)


def test_parts_present_and_consistent(shapes):
    P = len(shapes.seg_classes)
    assert len(shapes.category_of_seg) == P
    assert shapes.seg_classes[0] == "table/top"
    for p, s, y in zip(shapes.points, shapes.seg, shapes.labels):
        assert s.min() >= 0 and s.max() < P
        assert (shapes.category_of_seg[s] == y).all()  # parts belong to the cloud's class
        assert len(np.unique(s)) >= 2
    # every part name of every class shows up somewhere
    all_seg = np.concatenate(shapes.seg)
    assert set(np.unique(all_seg)) == set(range(P))


def test_class_subset():
    s = generate_shapes(6, num_points=64, seed=0, classes=["mug", "car"])
    assert s.classes == ["mug", "car"]
    assert s.seg_classes == ["mug/body", "mug/handle", "car/body", "car/cabin", "car/wheels"]
    np.testing.assert_array_equal(s.category_of_seg, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(s.labels, [0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="valid"):
        generate_shapes(2, classes=["spaceship"])


def test_occlusion_keeps_n():
    full = generate_shapes(10, num_points=256, seed=1)
    occ = generate_shapes(10, num_points=256, seed=1, occlusion_prob=1.0)
    for p, s, q in zip(occ.points, occ.seg, full.points):
        assert p.shape == (256, 3) and s.shape == (256,)
        assert np.linalg.norm(p, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        assert not np.array_equal(p, q)


def test_normals_unit():
    s = generate_shapes(10, num_points=256, seed=2, with_normals=True, noise=0.0)
    for p in s.points:
        assert p.shape == (256, 6)
        np.testing.assert_allclose(np.linalg.norm(p[:, 3:], axis=1), 1.0, atol=1e-5)


def test_surface_sampling_is_area_uniform():
    rng = np.random.default_rng(0)
    pts, nrm = _sample_box({"half": (1.0, 2.0, 3.0)}, 60000, rng)
    frac_z = (np.abs(nrm[:, 2]) == 1).mean()  # z faces: 2*(2*4) of total area 2*(2*4 + 2*6 + 4*6)
    assert frac_z == pytest.approx(16 / 88, abs=0.01)
    np.testing.assert_allclose(np.abs(pts).max(axis=0), [1, 2, 3])
    # cone lateral (apex at h): the lower half of the height carries 3/4 of the area
    pts, _ = _sample_frustum({"r0": 1.0, "r1": 0.0, "h": 2.0, "cap0": 0.0, "cap1": 0.0}, 60000, rng)
    assert (pts[:, 2] < 1.0).mean() == pytest.approx(0.75, abs=0.01)


def test_learnable_but_not_trivial():
    """A linear classifier on simple global statistics does well but not perfectly."""
    s = generate_shapes(300, num_points=256, seed=11)

    def feats(p):
        x = p - p.mean(axis=0)
        ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))
        return np.concatenate([ev, x.max(axis=0) - x.min(axis=0), [x[:, 2].std(), 1.0]])

    X = np.stack([feats(p) for p in s.points])
    X[:, :-1] = (X[:, :-1] - X[:, :-1].mean(0)) / X[:, :-1].std(0)
    Y = np.eye(len(s.classes))[s.labels]
    W = np.linalg.solve(X.T @ X + 1e-3 * np.eye(X.shape[1]), X.T @ Y)
    acc = (np.argmax(X @ W, axis=1) == s.labels).mean()
    assert 0.3 < acc < 1.0
