"""Stage `export`: task model -> ONNX graph (checked against PyTorch in onnxruntime) -> optional
TensorRT engine built ahead of time into the engine cache (so the node's first frame is fast)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..runtime.export import ExportGraph, example_inputs, export_onnx, signature_of, to_numpy
from ..models.io import load_task_model

log = logging.getLogger(__name__)


def parity_error(model, onnx_path: str | Path, cases=((1, 48, 48, 500), (2, 64, 20, 300), (3, 32, 16, 64))) -> float:
    """Max abs difference of onnxruntime vs PyTorch over all outputs at several shapes / budgets."""
    import onnxruntime as ort
    graph = ExportGraph(model)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b, c, budget, m in cases:
        ex = example_inputs(model, batch=b, num_centers=c, budget=budget, num_points=m, seed=b + c)
        with torch.no_grad():
            ref = graph(*ex)
        for o, t in zip(sess.run(None, to_numpy(ex, graph.sig.input_names)), ref):
            if o.size:
                worst = max(worst, float(np.abs(o.astype(np.float64) - t.numpy().astype(np.float64)).max()))
    return worst


def run_export(model_path: str, onnx: str, tensorrt: bool = False, precision: str = "fp16", cache_dir: str = "",
               max_points: int = 131072, min_centers: int = 32, max_centers: int = 1024, check: bool = True) -> Path:
    model, meta = load_task_model(model_path)
    path = export_onnx(model, onnx)
    print(f"[export] {path} ({path.stat().st_size / 1e6:.1f} MB), inputs {signature_of(model).input_names}", flush=True)
    if check:
        err = parity_error(model, path)
        print(f"[export] onnxruntime vs PyTorch: max abs error {err:.2e} over 3 shapes / budgets", flush=True)
        if err > 1e-4:
            raise RuntimeError(f"exported graph differs from PyTorch by {err:.2e} (> 1e-4)")
    if tensorrt:
        from ..runtime.export import default_cache_dir
        from ..runtime.tensorrt_engine import engine_for_model
        engine_for_model(model, path, default_cache_dir(cache_dir), precision, min_centers, max_centers, max_points)
        print(f"[export] TensorRT {precision} engine ready in {default_cache_dir(cache_dir) / 'engines'}", flush=True)
    return path
