"""Frame geometry beside the network (runtime/frame_geometry.py) and the Predictor's per-point choice."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from foundry_core.configs import OperatingPoint
from foundry_core.models.local_shape import local_shape
from foundry_core.runtime.frame_geometry import FILL_CHUNKS, GeometryWorker
from foundry_core.runtime.postprocess import FillQueries, fill_from_used
from foundry_core.runtime.predictor import Predictor
from foundry_core.runtime.preprocess import PreprocessConfig, preprocess
from foundry_core.typed_yaml import ConfigError
from support.exports import cloud, export_task_model, scene_pre

POINTS = [OperatingPoint("lo", points=256, centers=8, budget=4), OperatingPoint("hi", points=1024, centers=32)]


def _pre(n: int = 6000, max_points: int = 700, seed: int = 1):
    pts = cloud(n, seed=seed)
    pts[::97, 1] = np.nan                                             # non-finite rows are never filled
    return pts, preprocess(pts, PreprocessConfig(max_points=max_points, crop_box=[-3, -3, -2, 3, 3, 2]), seed=0)


def test_beside_gives_the_in_line_arrays_and_every_removed_row_its_nearest_used_point():
    pts, pre = _pre()
    worker = GeometryWorker()
    try:
        inline = worker.submit(pts, pre, 8, (0.0, 0.5), threaded=False)
        beside = worker.submit(pts, pre, 8, (0.0, 0.5), threaded=True)
        np.testing.assert_array_equal(beside.point_features(), inline.point_features())
        np.testing.assert_array_equal(beside.point_features(), local_shape(pre.xyz, 8, (0.0, 0.5)))
        rows, nearest = beside.fill()
        np.testing.assert_array_equal(rows, inline.fill()[0])
        np.testing.assert_array_equal(nearest, inline.fill()[1])
        assert beside.fill()[1] is nearest                         # the same array on every call
        # the rows: in the crop, finite, not used; each one's nearest used point (brute force)
        expect = np.flatnonzero(pre.in_region & ~np.isin(np.arange(len(pts)), pre.source_index))
        np.testing.assert_array_equal(rows, expect)
        d = ((pts[rows, None, :3] - pts[pre.source_index][None, :, :3]) ** 2).sum(-1)
        np.testing.assert_allclose(d[np.arange(rows.size), nearest], d.min(1), rtol=1e-5)
    finally:
        worker.close()


def test_fill_slices_the_worker_has_not_started_are_queried_by_the_caller():
    pts, pre = _pre(n=20000, max_points=300)
    worker = GeometryWorker()
    gate = threading.Event()
    try:
        worker.submit(pts, pre, threaded=True).fill()             # starts the pool
        worker._pool.submit(gate.wait)                            # the worker is busy: nothing below starts
        geometry = worker.submit(pts, pre, 8, threaded=True)
        rows, nearest = geometry.fill()                           # every slice taken by the caller
        assert len(geometry._stolen) == FILL_CHUNKS
        np.testing.assert_array_equal(nearest, fill_from_used(pts, pre)[1])
        gate.set()
        np.testing.assert_array_equal(geometry.point_features(), local_shape(pre.xyz, 8))
    finally:
        gate.set()
        worker.close()


def test_no_removed_rows_and_worker_errors():
    pts = cloud(300)
    pre = preprocess(pts, PreprocessConfig(max_points=1000))
    assert FillQueries(pts, pre).num_slices == 0
    worker = GeometryWorker()
    try:
        rows, nearest = worker.submit(pts, pre, threaded=True).fill()
        assert rows.size == 0 and nearest.size == 0
        bad = worker.submit(pts, pre, local_shape_k=-1, threaded=True)   # local_shape raises on the worker
        with pytest.raises(ValueError, match="k must be >= 1"):
            bad.point_features()
    finally:
        worker.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return export_task_model(tmp_path_factory.mktemp("geometry"), operating_points=POINTS, point_geometry=True,
                             local_shape_k=8, local_shape_voxels=(0.0, 0.5))


def test_predictor_outputs_do_not_depend_on_where_the_geometry_runs(model_path):
    pred = Predictor.from_checkpoint(model_path, device="cpu", preprocess=scene_pre(max_points=600))
    pts = cloud(5000, seed=3)
    threads = torch.get_num_threads()
    for op in ("lo", "hi", None):
        a, b = pred(pts, operating_point=op, overlap=True), pred(pts, operating_point=op, overlap=False)
        for name in ("labels", "confidence", "segments", "embeddings"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert torch.get_num_threads() == threads                 # one thread less only during the network


def test_calibrate_chooses_where_the_geometry_runs_per_point(model_path):
    if torch.get_num_threads() < 2:
        pytest.skip("one CPU thread: nothing runs beside the network")
    pred = Predictor.from_checkpoint(model_path, device="cpu", preprocess=scene_pre())
    assert pred.overlap_by_point == {} and pred.overlaps(POINTS[0])          # beside until calibrated
    costs = pred.calibrate(repeats=1)
    assert set(costs) == set(pred.overlap_by_point) == {"lo", "hi"}
    for op in POINTS:
        assert pred.overlaps(op) == pred.overlap_by_point[op.name]
    never = Predictor.from_checkpoint(model_path, device="cpu", preprocess=scene_pre(), overlap_geometry="never")
    never.calibrate(repeats=1)
    assert never.overlap_by_point == {} and not never.overlaps(POINTS[0])
    assert Predictor.from_checkpoint(model_path, device="cpu", overlap_geometry="always").overlaps(POINTS[1])
    with pytest.raises(ConfigError, match="overlap_geometry"):
        Predictor.from_checkpoint(model_path, device="cpu", overlap_geometry="sometimes")


def test_a_forked_child_gets_a_worker_of_its_own():
    import multiprocessing as mp
    pts, pre = _pre(n=3000, max_points=300)
    worker = GeometryWorker()
    try:
        parent = worker.submit(pts, pre, 8, threaded=True)                # the parent's pool is running
        expect = parent.point_features(), parent.fill()[1]
        _INHERITED[:] = [worker, pts, pre]                                # what the forked child sees
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_child_fill).get(timeout=60)         # no deadlock on the parent's pool
        for a, b in zip(got, expect):
            np.testing.assert_array_equal(a, b)
    finally:
        _INHERITED.clear()
        worker.close()


_INHERITED: list = []


def _child_fill():
    worker, pts, pre = _INHERITED
    geometry = worker.submit(pts, pre, 8, threaded=True)
    return geometry.point_features(), geometry.fill()[1]


def test_calibrate_stops_when_asked(model_path):
    from foundry_core.runtime.types import CalibrationStopped
    pred = Predictor.from_checkpoint(model_path, device="cpu", preprocess=scene_pre())
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CalibrationStopped):
        pred.calibrate(repeats=1, should_stop=stop_after_three)
    assert len(calls) == 4                                     # checked before every call, stopped at once


def test_an_abandoned_call_stops_between_stages_and_the_next_call_is_unaffected(model_path):
    from foundry_core.runtime.types import FrameAbandoned
    pred = Predictor.from_checkpoint(model_path, device="cpu", preprocess=scene_pre(max_points=600))
    pts = cloud(5000, seed=4)
    expect = pred(pts, operating_point="hi")
    for overlap in (True, False):
        for answers in ([True], [False, True]):                   # after preprocessing / after the network
            asked = []

            def abandon(answers=answers, asked=asked):
                asked.append(1)
                return answers[len(asked) - 1]
            with pytest.raises(FrameAbandoned):
                pred(pts, operating_point="hi", overlap=overlap, abandon=abandon)
            assert len(asked) == len(answers)
        kept = pred(pts, operating_point="hi", overlap=overlap, abandon=lambda: False)   # asked twice, never stops
        for name in ("labels", "confidence", "segments"):
            np.testing.assert_array_equal(getattr(kept, name), getattr(expect, name))


def test_cancel_leaves_the_worker_free_for_the_next_frame():
    pts, pre = _pre()
    worker = GeometryWorker()
    try:
        geometry = worker.submit(pts, pre, 8, threaded=True)
        geometry.cancel()
        geometry.wait()                                            # returns: cancelled jobs are not waited for
        again = worker.submit(pts, pre, 8, threaded=True)
        np.testing.assert_array_equal(again.fill()[1], fill_from_used(pts, pre)[1])
    finally:
        worker.close()
