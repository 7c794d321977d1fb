"""Budget-aware predictor on tiny exported task models (gated student, teacher, cls, 4-channel)."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch

from foundry_core.runtime.predictor import Predictor, label_colors
from foundry_core.runtime.preprocess import PreprocessConfig, preprocess
from foundry_core.runtime.runners import tokenize
from support.exports import SEG_CLASSES, cloud, export_task_model, scene_pre


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return export_task_model(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return export_task_model(tmp_path_factory.mktemp("teacher"), kind="teacher")


def _check_aligned(res, n, invalid):
    assert res.labels.shape == (n,) and res.labels.dtype == np.int32
    assert res.confidence.shape == (n,) and res.confidence.dtype == np.float32
    assert res.segments.shape == (n,) and res.segments.dtype == np.int32
    assert np.all(res.labels[invalid] == -1) and np.all(res.confidence[invalid] == 0) and np.all(res.segments[invalid] == -1)
    ok = ~invalid
    assert np.all(res.labels[ok] >= 0) and np.all(res.labels[ok] < len(SEG_CLASSES))
    assert np.all(res.confidence[ok] > 0) and np.all(res.confidence[ok] <= 1)
    assert np.all(res.segments[ok] >= 0)
    assert set(np.unique(res.segments[ok])) <= set(res.token_segments.tolist())


def test_unorganised_cloud_with_nans(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre())
    pts = cloud()
    bad = np.zeros(len(pts), bool)
    bad[::17] = True
    pts[::17, 1] = np.nan
    pts[5, 0] = np.inf
    bad[5] = True
    res = pred(pts)
    _check_aligned(res, len(pts), bad)
    assert len(np.unique(res.labels[~bad])) > 1
    r = res.report
    assert (r.points_in, r.points_used, r.points_unlabelled) == (len(pts), int((~bad).sum()), int(bad.sum()))
    assert res.centers.shape == (r.num_centers, 3) and res.embeddings.shape == (r.num_centers, 32)
    assert res.token_segments.shape == (r.num_centers,)


def test_organised_cloud(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre())
    h, w = 24, 40
    grid = cloud(h * w, seed=1).reshape(h, w, 3)
    grid[3, :] = np.nan                 # a dead ring
    grid[:, 7] = np.nan                 # a dead column
    res = pred(grid)
    invalid = ~np.isfinite(grid).all(-1).reshape(-1)
    _check_aligned(res, h * w, invalid)
    assert np.all(res.labels.reshape(h, w)[3] == -1) and np.all(res.labels.reshape(h, w)[:, 7] == -1)
    flat = pred(grid.reshape(-1, 3))
    np.testing.assert_array_equal(res.labels, flat.labels)


def test_voxel_removed_points_take_nearest_used_label(student_path):
    cfg = scene_pre(voxel_size=0.6)
    pred = Predictor.from_checkpoint(student_path, preprocess=cfg)
    pts = cloud(2000, seed=2)
    res = pred(pts)
    pre = preprocess(pts, cfg, seed=0)
    used = pre.source_index
    assert 0 < len(used) < len(pts) and res.report.points_used == len(used)
    removed = np.setdiff1d(np.arange(len(pts)), used)
    d = ((pts[removed, None, :] - pts[None, used, :]) ** 2).sum(-1)
    nearest = used[d.argmin(1)]
    np.testing.assert_array_equal(res.labels[removed], res.labels[nearest])
    np.testing.assert_array_equal(res.segments[removed], res.segments[nearest])
    assert len(np.unique(res.labels)) > 1 and np.all(res.labels >= 0)


def test_voxel_centroid_mode_one_point_per_voxel():
    pts = cloud(3000, seed=3)
    for mode in ("first", "centroid"):
        pre = preprocess(pts, PreprocessConfig(voxel_size=0.5, voxel_mode=mode))
        keys = np.floor(pts[pre.source_index] / 0.5).astype(np.int64)
        assert len(np.unique(keys, axis=0)) == len(keys) == len(np.unique(np.floor(pts / 0.5), axis=0))


def test_crop_and_range(student_path):
    box = [-2.0, -2.0, -1.0, 2.0, 2.0, 1.0]
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre(crop_box=box, min_range=0.5))
    pts = cloud(1500, seed=4)
    pts[0] = np.nan
    res = pred(pts)
    with np.errstate(invalid="ignore"):
        inside = ((pts >= box[:3]) & (pts <= box[3:])).all(1) & (np.linalg.norm(pts, axis=1) >= 0.5)
    assert np.all(res.labels[~inside] == -1) and np.all(res.labels[inside] >= 0)
    assert res.report.points_used == inside.sum() and res.report.points_unlabelled == len(pts) - inside.sum()
    lo, hi = np.array(box[:3]), np.array(box[3:])
    assert np.all((res.centers >= lo - 1e-6) & (res.centers <= hi + 1e-6))


def test_empty_clouds_are_defined(student_path):
    cropped = Predictor.from_checkpoint(student_path, preprocess=scene_pre(crop_box=[10, 10, 10, 11, 11, 11]))
    plain = Predictor.from_checkpoint(student_path, preprocess=scene_pre())
    nan = np.full((300, 3), np.nan, np.float32)
    for pred, pts in ((plain, nan), (plain, np.zeros((0, 3), np.float32)), (cropped, nan), (cropped, cloud(300))):
        res = pred(pts, budget=8)
        assert res.labels.shape == (len(pts),) and np.all(res.labels == -1) and np.all(res.segments == -1)
        assert np.all(res.confidence == 0)
        assert res.report.points_used == 0 and res.report.points_unlabelled == len(pts)
        assert res.report.tokens_in_encoder == 0 and res.centers.shape == (0, 3)
        assert res.embeddings.shape == (0, 32) and "total" in res.report.timings_ms


def test_budget_changes_take_effect_immediately(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre(min_centers=16, max_centers=16))
    assert pred.budget_adjustable and (pred.min_budget, pred.max_budget) == (4, 16)
    pts = cloud(800, seed=5)
    used = {}
    for b in (4, 12, 4, 12, 16):
        r = pred(pts, budget=b, fusion_threshold=2.0).report            # budget only (r > 1: no threshold)
        assert r.tokens_in_encoder <= b and r.token_budget == b and r.fusion_threshold == 2.0
        used.setdefault(b, set()).add(r.tokens_in_encoder)
    assert all(len(v) == 1 for v in used.values())          # same budget, same answer
    assert used[4] != used[12]
    assert pred(pts, budget=1).report.token_budget == 4      # clamped to [min_budget, max_budget]
    r = pred(pts, fusion_threshold=0.2).report
    assert r.fusion_threshold == pytest.approx(0.2) and r.token_budget == 16
    r = pred(pts).report
    assert r.fusion_threshold == pytest.approx(0.5)              # the gate's training threshold
    capped = pred(pts, budget=6).report                      # threshold and budget cap together
    assert capped.fusion_threshold == pytest.approx(0.5) and capped.tokens_in_encoder <= min(6, r.tokens_in_encoder)


def test_deterministic_with_fixed_seed(student_path):
    cfg = scene_pre(max_points=700)       # the cap's random subset is seeded as well
    a = Predictor.from_checkpoint(student_path, preprocess=cfg, seed=3)
    b = Predictor.from_checkpoint(student_path, preprocess=cfg, seed=3)
    pts = cloud(1200, seed=6)
    r1, r2, r3 = a(pts, budget=8), a(pts, budget=8), b(pts, budget=8)
    for r in (r2, r3):
        np.testing.assert_array_equal(r1.labels, r.labels)
        np.testing.assert_array_equal(r1.segments, r.segments)
        np.testing.assert_array_equal(r1.centers, r.centers)
        np.testing.assert_allclose(r1.embeddings, r.embeddings, rtol=0, atol=1e-6)


def test_report_fields_and_label_info(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre(), precision="fp16")
    res = pred(cloud(600, seed=7))
    r = res.report
    digest = hashlib.sha256(open(student_path, "rb").read()).hexdigest()
    assert r.backend == "torch-cpu" and r.precision == "fp32"          # auto on CPU; fp16 falls back
    assert [rung for rung, _ in pred.backend_choice.skipped] == ["tensorrt", "torch-cuda"]
    assert len(r.model_hash) == 12 and r.model_hash == digest[:12]
    assert {"preprocess", "tokenize", "encode", "head", "total"} <= set(r.timings_ms)
    assert all(v >= 0 for v in r.timings_ms.values())
    assert r.num_centers == 19 and r.tokens_in_encoder > 0            # round(600 / 32)
    info = pred.label_info()
    assert [(i.id, i.name) for i in info] == list(enumerate(SEG_CLASSES))
    assert len({i.color for i in info}) == len(info)
    assert all(len(i.color) == 4 and all(0 <= v <= 1 for v in i.color) for i in info)
    assert len(set(label_colors(64))) == 64


@pytest.mark.parametrize("fold", [True, False])
def test_chunked_head_matches_head_forward(student_path, fold):
    cfg = scene_pre()
    pred = Predictor.from_checkpoint(student_path, preprocess=cfg, head_chunk=97, fold_head=fold, backend="torch")
    assert (pred.folded_mlp is not None) == fold
    with torch.no_grad():   # non-trivial BatchNorm statistics, so folding is exercised
        for mod in pred.head.mlp:
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    if fold:
        pred.folded_mlp = type(pred.folded_mlp).build(pred.head.mlp, 32)
    pts = cloud(900, seed=8)
    res = pred(pts, budget=10)
    pre = preprocess(pts, cfg)
    with torch.inference_mode():
        x = torch.from_numpy(pre.points).unsqueeze(0)
        tok = tokenize(pred.backbone.tokenizer, x, pre.num_centers, torch.Generator().manual_seed(0))
        out = pred.backbone.encode(tok, budget=10)
        logits = pred.head(out, x)[0]
    top2 = logits.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(res.labels[pre.source_index][clear], logits.argmax(-1).numpy()[clear])
    np.testing.assert_allclose(res.confidence[pre.source_index], torch.softmax(logits, -1).max(-1).values.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(res.embeddings, out.last[0].numpy(), atol=1e-6)


def test_extra_channels(tmp_path, student_path):
    pts4 = cloud(700, seed=9, channels=4)
    pts4[:, 3] = np.abs(pts4[:, 3])                      # intensity
    pred4 = Predictor.from_checkpoint(export_task_model(tmp_path, in_channels=4), preprocess=scene_pre())
    res = pred4(pts4)
    assert np.all(res.labels >= 0)
    with pytest.raises(ValueError, match="4 channels"):
        pred4(pts4[:, :3])
    pred3 = Predictor.from_checkpoint(student_path, preprocess=scene_pre())
    np.testing.assert_array_equal(pred3(pts4).labels, pred3(pts4[:, :3]).labels)
    pts4[0, 3] = np.nan                                   # a channel the model ignores does not invalidate
    assert pred3(pts4).labels[0] >= 0 and pred4(pts4).labels[0] == -1


def test_teacher_ignores_budgets(teacher_path, caplog):
    pred = Predictor.from_checkpoint(teacher_path, preprocess=scene_pre())
    assert not pred.budget_adjustable and pred.min_budget == pred.max_budget
    pts = cloud(640, seed=10)
    with caplog.at_level(logging.WARNING, logger="foundry_core.runtime.predictor"):
        results = [pred(pts, budget=b) for b in (4, 12, 20)]
    assert sum("ignored" in rec.message for rec in caplog.records) == 1
    for res in results:
        assert res.report.tokens_in_encoder == res.report.num_centers == res.report.token_budget == 20
        np.testing.assert_array_equal(res.labels, results[0].labels)
        np.testing.assert_array_equal(res.token_segments, np.arange(20))
    assert np.all(results[0].labels >= 0)


def test_cls_model_unit_sphere(tmp_path):
    pred = Predictor.from_checkpoint(export_task_model(tmp_path, kind="teacher", task="cls"))
    assert pred.pre_cfg.normalize == "unit_sphere" and [i.name for i in pred.label_info()] == ["a", "b", "c"]
    pts = cloud(500, seed=11) * 10 + np.array([100.0, -50.0, 3.0], np.float32)
    pts[7] = np.nan
    res = pred(pts)
    ok = np.isfinite(pts).all(1)
    assert res.labels[7] == -1 and len(np.unique(res.labels[ok])) == 1 and res.labels[ok][0] >= 0
    assert res.report.num_centers == 16
    # centers are FPS-chosen input points, reported in the input frame
    d = np.abs(res.centers[:, None, :] - pts[None, ok, :]).max(-1).min(1)
    assert np.all(d < 1e-3)


def test_large_cloud(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre(max_points=2 ** 16, points_per_center=512,
                                                                        max_centers=128))
    pts = cloud(2 ** 16, seed=12) * 10
    res = pred(pts, budget=24)
    assert res.labels.shape == (2 ** 16,) and np.all(res.labels >= 0)
    assert res.report.points_used == 2 ** 16 and res.report.num_centers == 128
    assert res.report.tokens_in_encoder <= 24


def test_baseline_backbone(tmp_path):
    pred = Predictor.from_checkpoint(export_task_model(tmp_path, kind="random"), preprocess=scene_pre(), seed=1)
    assert pred.kind == "baseline" and not pred.budget_adjustable
    pts = cloud(500, seed=13)
    a, b = pred(pts, budget=20), pred(pts)
    assert a.report.tokens_in_encoder == 6 and np.all(a.labels >= 0)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_partseg_needs_category(tmp_path):
    pred = Predictor.from_checkpoint(export_task_model(tmp_path, task="partseg"))
    assert pred.pre_cfg.normalize == "unit_sphere"
    pts = cloud(400, seed=14) + 5
    with pytest.raises(ValueError, match="category"):
        pred(pts)
    a, b = pred(pts, category=0), pred(pts, category=2)
    assert np.all(a.labels >= 0) and not np.array_equal(a.confidence, b.confidence)


def test_warm_up_runs_one_call(student_path):
    pred = Predictor.from_checkpoint(student_path, preprocess=scene_pre())
    assert pred.warm_up() > 0
    assert pred(cloud(300)).labels.shape == (300,)


def test_scene_default_thins_by_range_and_labels_everything_within_range(student_path):
    pred = Predictor.from_checkpoint(student_path)               # no preprocess in the metadata
    assert (pred.pre_cfg.thinning, pred.pre_cfg.max_range, pred.pre_cfg.crop_box) == ("range", 50.0, None)
    rng = np.random.default_rng(15)
    pts = np.concatenate([cloud(1500, seed=15), rng.uniform(-70, 70, size=(1500, 3)).astype(np.float32)])
    pts[3] = np.nan
    capped = Predictor.from_checkpoint(student_path, preprocess=scene_pre(thinning="range", max_range=50.0,
                                                                          max_points=1000))
    with np.errstate(invalid="ignore"):
        inside = np.linalg.norm(pts, axis=1) <= 50.0
    for p in (pred, capped):
        res = p(pts)
        assert np.all(res.labels[inside] >= 0) and np.all(res.labels[~inside] == -1)
        assert res.report.operating_point == ""
    assert capped(pts).report.points_used == 1000
