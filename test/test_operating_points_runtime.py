"""Operating points in the runtime: checkpoint round trip, per-call overrides, defaults, validation,
calibration and the model card's per-point evaluation (tiny exported models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundry_core.checkpoint import load_checkpoint
from foundry_core.configs import OperatingPoint
from foundry_core.runtime.operating_points import from_meta, operating_points_of, to_meta
from foundry_core.runtime.predictor import Predictor
from foundry_core.stages.model_card import (evaluate_operating_points, measured_operating_points, plot_card,
                                            ship_fp16, write_card)
from foundry_core.typed_yaml import ConfigError
from support.exports import SEG_CLASSES, cloud, export_task_model, scene_pre

OPS = [OperatingPoint("low", points=400, centers=8, budget=4),
       OperatingPoint("mid", points=800, centers=16, budget=10, fusion_threshold=2.0),
       OperatingPoint("high", points=1500, centers=32, budget=32)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ops_path(tmp_path_factory):
    return export_task_model(tmp_path_factory.mktemp("ops"), operating_points=OPS)


@pytest.fixture(scope="module")
def pred(ops_path):
    return Predictor.from_checkpoint(ops_path, preprocess=scene_pre())


def test_operating_points_round_trip_through_the_checkpoint(ops_path, pred):
    assert pred.operating_points == OPS
    assert from_meta(to_meta(OPS)) == OPS
    _, meta = load_checkpoint(ops_path)
    assert meta["operating_points"] == to_meta(OPS)
    assert pred.operating_point("mid") == OPS[1]
    with pytest.raises(ConfigError, match="unknown operating point 'huge'"):
        pred.operating_point("huge")


def test_operating_point_moves_what_it_claims(pred):
    pts = cloud(1500, seed=1)
    s = int(pred.num_supertokens)
    for op in pred.operating_points:
        res = pred(pts, operating_point=op.name)
        r = res.report
        assert r.operating_point == op.name and r.points_used <= op.points and r.num_centers <= op.centers
        assert r.token_budget == min(op.budget, r.num_centers) and r.fusion_threshold == 2.0
        # every encoder token is one segment; the budget decides how many tokens bypass the SuperTokens
        assert r.tokens_in_encoder == len(np.unique(res.token_segments)) <= min(op.budget, r.num_centers)
        bypass = int((np.unique(res.token_segments) >= s).sum())
        assert bypass == (r.num_centers if op.budget >= r.num_centers else op.budget - s)
        assert np.all(res.labels >= 0)
    high = pred(pts, operating_point="high").report
    assert high.tokens_in_encoder == high.num_centers == 32 and high.points_used == 1500


def test_explicit_arguments_win_and_nothing_is_cached(pred):
    pts = cloud(1500, seed=2)
    plain = pred(pts)
    r = pred(pts, operating_point="mid", budget=6, fusion_threshold=0.3).report
    assert (r.token_budget, r.fusion_threshold, r.operating_point) == (6, pytest.approx(0.3), "mid")
    assert r.points_used == 800 and r.num_centers == 16
    direct = pred(pts, operating_point=OperatingPoint("adhoc", points=500, centers=12, budget=2)).report
    assert direct.operating_point == "adhoc" and direct.token_budget == 4    # clamped to budget_range (s = 4)
    again = pred(pts)
    assert again.report.operating_point == "" and again.report.points_used == plain.report.points_used == 1500
    np.testing.assert_array_equal(again.labels, plain.labels)
    assert again.report.num_centers == plain.report.num_centers


def test_default_operating_points_from_the_preprocess_config(tmp_path):
    (tmp_path / "s").mkdir()
    student = Predictor.from_checkpoint(export_task_model(tmp_path / "s"), preprocess=scene_pre())
    ops = student.operating_points
    assert [op.name for op in ops] == ["eighth", "quarter", "half", "full"]
    assert [op.points for op in ops] == [512, 1024, 2048, 4096]
    assert [op.centers for op in ops] == [8, 8, 16, 32]                    # >= min_centers
    assert ops[0].budget == student.min_budget and ops[-1].budget == student.max_budget
    assert all(lo.budget <= hi.budget for lo, hi in zip(ops, ops[1:]))
    assert all(op.budget <= op.centers for op in ops)
    (tmp_path / "t").mkdir()
    teacher = Predictor.from_checkpoint(export_task_model(tmp_path / "t", kind="teacher"), preprocess=scene_pre())
    assert all(op.budget is None and op.fusion_threshold is None for op in teacher.operating_points)
    r = teacher(cloud(1500), operating_point="quarter").report
    assert r.points_used == 1024 and r.tokens_in_encoder == r.num_centers == 8


@pytest.mark.parametrize("items, match", [
    ([{"name": "a", "points": 10, "centers": 8}, {"name": "a", "points": 20, "centers": 8}], "unique"),
    ([{"name": "a", "points": 20, "centers": 8}, {"name": "b", "points": 10, "centers": 8}], "cheapest first"),
    ([{"name": "a", "points": 10, "centers": 16}, {"name": "b", "points": 20, "centers": 8}], "cheapest first"),
    ([{"name": "a", "points": 10, "centers": 8, "speed": 1}], "unknown key"),
    ([{"name": "a", "points": 0, "centers": 8}], "must be >= 1"),
    ({"name": "a"}, "must be a list"),
])
def test_invalid_operating_point_lists_are_config_errors(pred, items, match):
    with pytest.raises(ConfigError, match=match):
        operating_points_of({"operating_points": items}, pred.pre_cfg, pred.backbone)


def test_budgets_are_clamped_to_the_backbone(pred):
    items = [{"name": "a", "points": 100, "centers": 8, "budget": 1}, {"name": "b", "points": 200, "centers": 8,
                                                                      "budget": 99}]
    assert [op.budget for op in operating_points_of({"operating_points": items}, pred.pre_cfg, pred.backbone)] == [4, 8]


def test_calibrate_one_positive_latency_per_point(pred):
    lat = pred.calibrate(repeats=1)
    assert list(lat) == [op.name for op in pred.operating_points] and all(v > 0 for v in lat.values())
    assert list(pred.calibrate(cloud(600, seed=3), repeats=2)) == list(lat)
    with pytest.raises(ValueError, match="repeats"):
        pred.calibrate(repeats=0)


def test_calibration_counts_only_the_stages_the_point_sets(pred, monkeypatch):
    """Pre- and postprocessing (input-size costs, however slow) stay out of a point's cost."""
    call = type(pred).__call__

    def slow_mapping(self, *a, **kw):
        res = call(self, *a, **kw)
        res.report.timings_ms["preprocess"] += 500.0
        res.report.timings_ms["postprocess"] += 500.0
        return res

    monkeypatch.setattr(type(pred), "__call__", slow_mapping)
    lat = pred.calibrate(repeats=1)
    assert all(0.0 < v < 500.0 for v in lat.values()), lat


def test_a_stall_during_calibration_does_not_make_a_cheap_point_dear(pred, monkeypatch):
    """The cheapest point's samples are slowed by a stall in the encoder (as right after start-up):
    its cost is capped at the next point's, so the controller still uses it."""
    call = type(pred).__call__
    slowed = {"n": 0}

    def stalled(self, points, *a, operating_point=None, **kw):
        res = call(self, points, *a, operating_point=operating_point, **kw)
        if getattr(operating_point, "name", operating_point) == "low" and slowed["n"] < 4:
            slowed["n"] += 1
            res.report.timings_ms["encode"] += 300.0
        return res

    monkeypatch.setattr(type(pred), "__call__", stalled)
    lat = pred.calibrate(repeats=3)
    assert lat["low"] <= lat["mid"] <= lat["high"] < 300.0, lat


def test_model_card_evaluates_and_ships_operating_points(tmp_path, ops_path, pred):
    rng = np.random.default_rng(4)
    sweeps = [(cloud(1200, seed=i), rng.integers(0, len(SEG_CLASSES), 1200)) for i in range(2)]
    rows = evaluate_operating_points(pred, sweeps, len(SEG_CLASSES))
    assert list(rows) == ["low", "mid", "high"]
    assert rows["low"]["points_used"] <= 400 and rows["high"]["tokens_in_encoder"] == 32
    assert all(len(r["per_class_iou"]) == len(SEG_CLASSES) and r["latency_ms_p50"] > 0 for r in rows.values())
    measured = measured_operating_points(pred.operating_points, rows)
    path = ship_fp16(ops_path, tmp_path / "shipped.safetensors", pred.pre_cfg, {}, measured)
    shipped = Predictor.from_checkpoint(path).operating_points
    assert [(op.name, op.points, op.budget) for op in shipped] == [(op.name, op.points, op.budget) for op in OPS]
    assert all(op.miou == pytest.approx(rows[op.name]["miou"]) and op.latency_ms > 0 for op in shipped)
    card = {"classes": SEG_CLASSES, "heldout_sweeps": 2, "points_per_sweep": 1200, "supertokens": 4,
            "preprocess": {"crop_box": [-12, -12, -10, 12, 12, 10]}, "baseline_miou_all_ground": 10.0,
            "results": {"torch-cpu": rows}, "axis": "operating_point"}
    write_card(card, tmp_path / "card.md", ops_path, "")
    text = (tmp_path / "card.md").read_text()
    assert "| operating point |" in text and "| mid | 800 | 16 | 10 |" in text
    plot_card(card, tmp_path / "card.png")
    assert (tmp_path / "card.png").stat().st_size > 0
