"""Preprocessing caps: uniform (seeded subset) and range-aware thinning (keep p ~ r^2)."""
from __future__ import annotations

import numpy as np
import pytest

from foundry_core.runtime.operating_points import synthetic_sweep
from foundry_core.runtime.preprocess import PreprocessConfig, preprocess, range_keep_probability
from foundry_core.typed_yaml import ConfigError


def test_range_keep_probability_sums_to_k_capped_at_one():
    r2 = np.random.default_rng(0).uniform(0.0, 900.0, 5000) ** 2 / 900.0
    for k in (1, 50, 2500, 4999):
        p = range_keep_probability(r2, k)
        assert p.sum() == pytest.approx(k) and p.max() <= 1.0 + 1e-12 and p.min() > 0
        ranked = np.argsort(r2)
        assert np.all(np.diff(p[ranked]) >= -1e-12)            # farther: at least as likely


def test_range_thinning_keeps_far_points_and_exactly_max_points():
    pts = synthetic_sweep(20000, 3, max_range=30.0)
    cfg = PreprocessConfig(max_points=3000, thinning="range")
    pre = preprocess(pts, cfg, seed=1)
    assert pre.num_points == 3000 and len(np.unique(pre.source_index)) == 3000
    assert np.all(np.diff(pre.source_index) > 0)               # input order kept
    r = np.linalg.norm(pts, axis=1)
    kept = np.zeros(len(pts), bool)
    kept[pre.source_index] = True
    near, far = r < 6.0, r > 20.0
    assert near.sum() > 1000 and far.sum() > 1000
    assert kept[far].mean() > 3 * kept[near].mean() and kept[near].any()   # near thinned, not dropped
    uniform = preprocess(pts, PreprocessConfig(max_points=3000), seed=1)
    ukept = np.zeros(len(pts), bool)
    ukept[uniform.source_index] = True
    assert kept[far].mean() > ukept[far].mean()
    np.testing.assert_array_equal(preprocess(pts, cfg, seed=1).source_index, pre.source_index)   # seeded
    assert not np.array_equal(preprocess(pts, cfg, seed=2).source_index, pre.source_index)


def test_uniform_cap_is_the_seeded_subset():
    pts = synthetic_sweep(5000, 4, max_range=20.0)
    pre = preprocess(pts, PreprocessConfig(max_points=700), seed=3)
    expect = np.sort(np.random.default_rng(3).choice(5000, 700, replace=False))
    np.testing.assert_array_equal(pre.source_index, expect)


def test_no_thinning_below_the_cap():
    pts = synthetic_sweep(800, 3)
    pre = preprocess(pts, PreprocessConfig(max_points=800, thinning="range"))
    np.testing.assert_array_equal(pre.source_index, np.arange(800))


def test_invalid_thinning_is_a_config_error():
    with pytest.raises(ConfigError, match="thinning"):
        PreprocessConfig(thinning="nearest")
