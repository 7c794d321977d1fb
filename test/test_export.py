"""ONNX export: parity with PyTorch across budgets, batch sizes, cloud sizes; predictor on onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from foundry_core.runtime.export import ExportGraph, example_inputs, export_onnx, signature_of, to_numpy
from foundry_core.runtime.predictor import Predictor, load_task_model

from support.exports import cloud, export_task_model, scene_pre

# (batch, centers c, budget L, points M, fusion threshold) — none equal to the export example's shapes
CASES = [(1, 16, 16, 100, 2.0), (3, 24, 7, 500, 2.0), (2, 40, 30, 77, 0.5), (1, 20, 4, 10, 2.0), (4, 12, 9, 33, 0.3)]


@pytest.fixture(scope="module", params=[("student", "sceneseg"), ("teacher", "sceneseg"), ("student", "cls"),
                                        ("student", "partseg"), ("student", "sceneseg", "local_shape")],
                ids=lambda p: "-".join(p))
def exported(request, tmp_path_factory):
    kind, task = request.param[:2]
    shape = {"point_geometry": True, "local_shape_k": 8, "local_shape_voxels": (0.0, 1.0)} \
        if "local_shape" in request.param else {}
    d = tmp_path_factory.mktemp(f"{kind}_{task}")
    model, _ = load_task_model(export_task_model(d, kind=kind, task=task, **shape))
    path = export_onnx(model, d / "model.onnx")
    return model, path


def test_graph_inputs_are_dynamic(exported):
    model, path = exported
    proto = onnx.load(str(path))
    sig = signature_of(model)
    assert [i.name for i in proto.graph.input] == sig.input_names
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert all(isinstance(v, str) for v in dims["groups"][:2]) and dims["groups"][2:] == [8, 3]
    if sig.gated:
        assert isinstance(dims["slots"][0], str)
    ops = {n.op_type for n in proto.graph.node}
    assert "NonZero" not in ops and "Loop" not in ops            # fixed-shape formulation


def test_onnxruntime_parity_across_budgets_and_batches(exported):
    model, path = exported
    graph = ExportGraph(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, c, budget, m, r in CASES:
        ex = example_inputs(model, batch=b, num_centers=c, budget=budget, num_points=m, fusion_threshold=r, seed=b * c)
        with torch.no_grad():
            ref = graph(*ex)
        out = sess.run(None, to_numpy(ex, graph.sig.input_names))
        for name, o, t in zip(["logits", "embeddings", "segments", "tokens_in_encoder"], out, ref):
            assert o.shape == tuple(t.shape), (name, b, c, budget)
            err = float(np.abs(o.astype(np.float64) - t.numpy().astype(np.float64)).max()) if o.size else 0.0
            assert err <= 1e-4, (name, b, c, budget, err)
        if graph.sig.gated:
            assert int(out[3].max()) <= min(budget, c)           # the budget is never exceeded


def test_budget_lowers_tokens_in_exported_graph(exported):
    model, path = exported
    if not signature_of(model).gated:
        pytest.skip("fixed token count")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = signature_of(model).input_names
    ties = []
    for budget in (32, 16, 8, 4):
        ex = example_inputs(model, batch=2, num_centers=32, budget=budget, num_points=50, seed=3)
        ties.append(int(sess.run(None, to_numpy(ex, names))[3].max()))
    assert ties == sorted(ties, reverse=True) and ties[-1] <= 4 and ties[0] > ties[-1]


@pytest.mark.parametrize("shape", [{}, {"point_geometry": True, "local_shape_k": 8},
                                   {"point_geometry": True, "local_shape_k": 8, "local_shape_voxels": (0.0, 1.0)}],
                         ids=["plain", "local_shape", "local_shape_scales"])
def test_predictor_onnxruntime_matches_torch(tmp_path, shape):
    path = export_task_model(tmp_path, **shape)
    pre = scene_pre()
    torch_pred = Predictor.from_checkpoint(path, preprocess=pre, backend="torch")
    ort_pred = Predictor.from_checkpoint(path, preprocess=pre, backend="onnxruntime")
    assert (torch_pred.backend, ort_pred.backend) == ("torch-cpu", "onnxruntime-cpu")
    pts = cloud(1200, seed=11)
    pts[::13, 0] = np.nan
    for budget, r in [(None, None), (24, None), (10, None), (4, None), (None, 0.3)]:
        a, b = torch_pred(pts, budget=budget, fusion_threshold=r), ort_pred(pts, budget=budget, fusion_threshold=r)
        assert a.report.tokens_in_encoder == b.report.tokens_in_encoder
        np.testing.assert_array_equal(a.segments, b.segments)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
        assert (a.labels == b.labels).mean() > 0.995             # exact up to near-ties
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-4)


def test_export_refuses_baselines(tmp_path):
    model, _ = load_task_model(export_task_model(tmp_path, kind="random"))
    with pytest.raises(TypeError, match="baselines"):
        export_onnx(model, tmp_path / "x.onnx")
