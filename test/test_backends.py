"""Backend ladder fallbacks and the TensorRT engine cache (no TensorRT / CUDA needed)."""
from __future__ import annotations

import json
import logging

import pytest

from foundry_core.runtime.backends import rungs_for, select_backend
from foundry_core.runtime.predictor import Predictor
from foundry_core.runtime.tensorrt_engine import (AxisRange, cached_engine, engine_key, engine_paths, load_or_build,
                                                  profile_for, store_engine)

from support.exports import cloud, export_task_model, scene_pre


def test_rungs_for_each_request():
    assert rungs_for("auto", cuda=False) == ["tensorrt", "torch-cuda", "torch-cpu"]
    assert rungs_for("tensorrt", cuda=True) == ["tensorrt", "torch-cuda", "torch-cpu"]
    assert rungs_for("onnxruntime", cuda=True) == ["onnxruntime-cpu", "torch-cpu"]
    assert rungs_for("torch", cuda=True) == ["torch-cuda", "torch-cpu"]
    assert rungs_for("torch", cuda=False) == ["torch-cpu"]
    with pytest.raises(ValueError, match="backend must be one of"):
        rungs_for("openvino", cuda=False)


def test_ladder_skips_missing_and_failing_rungs_with_reasons(caplog):
    def missing():
        raise ImportError("No module named 'tensorrt'")

    def fails_at_load():
        raise RuntimeError("session creation failed: bad graph")

    with caplog.at_level(logging.WARNING):
        choice = select_backend(["tensorrt", "onnxruntime-cpu", "torch-cpu"],
                                {"tensorrt": missing, "onnxruntime-cpu": fails_at_load, "torch-cpu": lambda: "eager"},
                                requested="tensorrt")
    assert (choice.name, choice.runner) == ("torch-cpu", "eager")
    assert choice.skipped == [("tensorrt", "ImportError: No module named 'tensorrt'"),
                              ("onnxruntime-cpu", "session creation failed: bad graph")]
    assert "tensorrt" in caplog.text and "bad graph" in caplog.text
    assert "skipped tensorrt" in choice.summary()
    with pytest.raises(RuntimeError, match="last"):               # the last rung's failure is not hidden
        select_backend(["torch-cpu"], {"torch-cpu": lambda: (_ for _ in ()).throw(RuntimeError("last"))})


def test_predictor_falls_back_when_onnx_path_is_broken(tmp_path):
    path = export_task_model(tmp_path)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    pred = Predictor.from_checkpoint(path, preprocess=scene_pre(), backend="onnxruntime", onnx_path=str(bad))
    assert pred.backend == "torch-cpu"
    assert pred.backend_choice.skipped[0][0] == "onnxruntime-cpu"
    res = pred(cloud(400))
    assert res.report.backend == "torch-cpu" and (res.labels >= 0).all()


def test_tensorrt_request_without_cuda_runs_on_cpu(tmp_path):
    pred = Predictor.from_checkpoint(export_task_model(tmp_path), preprocess=scene_pre(), backend="tensorrt")
    skipped = dict(pred.backend_choice.skipped)
    assert pred.backend == "torch-cpu" and "CUDA" in skipped["tensorrt"] and "CUDA" in skipped["torch-cuda"]


# ----------------------------------------------------------------------------- engine cache
def _key(onnx, **kw):
    base = dict(precision="fp16", profile=profile_for(32, 1024, 16, 131072, 32, 3), tensorrt_version="10.9.0",
                gpu_name="NVIDIA Jetson Orin", compute_capability="8.7")
    return engine_key(onnx, **{**base, **kw})


def test_profile_spans_the_budget_range():
    p = profile_for(min_centers=32, max_centers=1024, min_budget=16, max_points=131072, group_size=32, channels=4)
    assert (p.slots.min, p.slots.max) == (16, 1024) and (p.centers.min, p.centers.max) == (32, 1024)
    shapes = p.shapes(["groups", "centers", "slots", "fusion_threshold", "points", "nn_idx"])
    assert shapes["groups"] == ((1, 32, 32, 4), (1, p.centers.opt, 32, 4), (1, 1024, 32, 4))
    assert shapes["slots"] == ((16,), (p.slots.opt,), (1024,)) and shapes["fusion_threshold"] == ((1,),) * 3
    assert shapes["nn_idx"][2] == (1, 131072, 3)
    with pytest.raises(ValueError):
        AxisRange(4, 2, 8)


def test_engine_key_changes_with_every_component(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph-1")
    base = _key(onnx)
    variants = [_key(onnx, precision="fp32"), _key(onnx, tensorrt_version="10.10.0"),
                _key(onnx, gpu_name="NVIDIA GeForce RTX 4070 Laptop GPU"), _key(onnx, compute_capability="8.9"),
                _key(onnx, profile=profile_for(32, 512, 16, 131072, 32, 3))]
    onnx.write_bytes(b"graph-2")                                   # same path, new content
    variants.append(_key(onnx))
    digests = {base.digest} | {v.digest for v in variants}
    assert len(digests) == 1 + len(variants)
    assert _key(onnx).digest == variants[-1].digest               # deterministic


def test_cache_roundtrip_and_invalidation(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    cache = tmp_path / "engines"
    key = _key(onnx)
    assert cached_engine(cache, key) is None
    engine, sidecar = engine_paths(cache, key)
    store_engine(cache, key, b"ENGINE-BYTES", build_s=1.0)
    assert cached_engine(cache, key) == b"ENGINE-BYTES"
    assert not list(cache.glob("*.tmp"))                           # atomic writes leave no temp files
    # a foreign engine (sidecar of another GPU) is never loaded
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "gpu_name": "other"}))
    assert cached_engine(cache, key) is None
    sidecar.write_text(json.dumps(meta))
    engine.write_bytes(b"ENGINE-BYT")                              # truncated engine
    assert cached_engine(cache, key) is None
    sidecar.write_text("{broken")
    assert cached_engine(cache, key) is None
    # a stale ONNX (edited after the build) maps to another key: rebuild
    store_engine(cache, key, b"ENGINE-BYTES", build_s=1.0)
    onnx.write_bytes(b"graph, edited")
    assert cached_engine(cache, _key(onnx)) is None


def test_load_or_build_explains_missing_tensorrt(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT present")
    except Exception:
        pass
    with pytest.raises(RuntimeError, match="TensorRT python bindings unavailable"):
        load_or_build(onnx, tmp_path, profile_for(32, 64, 16, 1024, 32, 3), "fp16", ["groups"])
