"""ONNX Runtime execution of an exported task-model graph (see runtime/export.py for its I/O)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# graph optimisation levels (foundry bench measures them; "all" is the default)
OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}


class OnnxRunner:
    """feeds {name: array} -> {output name: array} with one onnxruntime InferenceSession.

    providers: onnxruntime execution providers in order of preference; the session is created
    with those of them this onnxruntime build offers (a requested CUDA/TensorRT provider that is
    missing raises, so the backend ladder can report why the rung was skipped). threads: intra-op
    threads (0: onnxruntime's default); optimization: graph optimisation level (OPTIMIZATION_LEVELS).
    """

    def __init__(self, onnx_path: str | Path, providers: list[str], threads: int = 0, optimization: str = "all"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeError(f"onnxruntime {ort.__version__} has no {', '.join(missing)} "
                               f"(available: {', '.join(available)})")
        opts = ort.SessionOptions()
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"onnxruntime graph optimization must be one of {list(OPTIMIZATION_LEVELS)}, "
                             f"got {optimization!r}")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        opts.log_severity_level = 3
        if threads > 0:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        active = self.session.get_providers()
        if active[0] != providers[0]:
            raise RuntimeError(f"onnxruntime fell back to {active[0]} instead of {providers[0]}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = active

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(feeds) - set(self.input_names)
        missing = set(self.input_names) - set(feeds)
        if unknown or missing:
            raise ValueError(f"graph inputs are {self.input_names}; missing {sorted(missing)}, unexpected {sorted(unknown)}")
        return dict(zip(self.output_names, self.session.run(None, feeds)))
