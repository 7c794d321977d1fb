"""Backend ladder: pick the best inference backend that loads, saying why every higher rung was skipped.

Rungs, best first:

    tensorrt          TensorRT engine from the exported ONNX graph (CUDA; cached, see tensorrt_engine.py)
    torch-cuda        PyTorch eager on CUDA (fp16 autocast when precision is fp16)
    torch-cpu         PyTorch eager on CPU (always loads: the reference implementation)

backend="auto" walks these three; a named backend walks from that rung down, so a node asked for
TensorRT on a machine without it still runs (on the next rung, with the reason logged and reported).
backend="onnxruntime" runs the exported graph on ONNX Runtime's CPU provider, then falls back to
torch-cpu. It is not on the auto ladder: for the shipped scene model, whose cost is the tokenizer and
the per-point head, PyTorch eager with the folded head is faster on CPU (41–47 vs 54–63 ms a sweep, see
docs/model_card.md); for large encoders (ViT-S at 64+ tokens) ONNX Runtime is up to ~2x faster.
A rung is skipped when its requirements are missing (no CUDA, package not installed) or when it
fails at load (export, session or engine build error): the loader's exception is the reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

RUNGS = ("tensorrt", "torch-cuda", "torch-cpu")
BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")


@dataclass
class BackendChoice:
    name: str                                     # the active rung
    runner: Any                                   # what its loader returned (None for torch rungs)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (rung, reason), best first

    def summary(self) -> str:
        why = "; ".join(f"{r}: {reason}" for r, reason in self.skipped)
        return self.name + (f" (skipped {why})" if why else "")


def rungs_for(backend: str, cuda: bool) -> list[str]:
    """The rungs to try for a requested backend ("auto", "tensorrt", "torch", "onnxruntime")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return ["torch-cuda", "torch-cpu"] if cuda else ["torch-cpu"]
    if backend == "onnxruntime":
        return ["onnxruntime-cpu", "torch-cpu"]
    return list(RUNGS)


def select_backend(rungs: list[str], loaders: dict[str, Callable[[], Any]], requested: str = "auto") -> BackendChoice:
    """Try the rungs in order; loaders[rung]() returns the runner or raises with the reason.
    The last rung must load (its exception propagates). Skips are logged as warnings when a backend
    was asked for by name, as info under "auto" (no GPU on a CPU machine is not a problem)."""
    skipped: list[tuple[str, str]] = []
    for i, rung in enumerate(rungs):
        try:
            runner = loaders[rung]()
        except Exception as e:                    # noqa: BLE001 - every failure is a reason to step down
            if i == len(rungs) - 1:
                raise
            reason = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
            log.log(logging.INFO if requested == "auto" else logging.WARNING,
                    "backend %s unavailable: %s", rung, reason)
            skipped.append((rung, reason))
            continue
        choice = BackendChoice(rung, runner, skipped)
        log.info("inference backend: %s", choice.summary())
        return choice
    raise ValueError("no backend rungs to try")


# ------------------------------------------------------------------------------------------ loaders
def load_torch_cuda(device: Any) -> None:
    """The torch-cuda rung: needs a CUDA device (PyTorch eager runs the model; no runner)."""
    import torch
    if device.type != "cuda":
        raise RuntimeError("no CUDA device" if not torch.cuda.is_available() else "device set to cpu")
    return None


def load_onnxruntime(onnx_path: Callable[[], Any], device: Any, threads: int = 0):
    """ONNX Runtime on CPU; with a CUDA device and an onnxruntime build that has it, its CUDA
    provider (TensorRT provider first when present) with the CPU provider as fallback for ops.
    onnx_path: returns the exported graph (exporting it on first use)."""
    import onnxruntime as ort
    from .onnx_runner import OnnxRunner
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
        providers = gpu + providers
    return OnnxRunner(onnx_path(), providers, threads=threads)


def onnxruntime_backend_name(runner: Any) -> str:
    """'onnxruntime-cpu', or 'onnxruntime-cuda' / '-tensorrt' when a GPU provider is active."""
    return "onnxruntime-" + runner.providers[0].replace("ExecutionProvider", "").lower()


def load_tensorrt(model: Any, onnx_path: Callable[[], Any], cache_dir: Any, precision: str, device: Any,
                  min_centers: int, max_centers: int, max_points: int):
    """A TensorRT engine (cached) of the model's exported graph over the predictor's whole range."""
    from .export import OUTPUT_NAMES
    from .tensorrt_engine import TensorRTRunner, engine_for_model, tensorrt_module
    import torch
    if device.type != "cuda":
        raise RuntimeError("no CUDA device" if not torch.cuda.is_available() else "device set to cpu")
    tensorrt_module()
    data, names = engine_for_model(model, onnx_path(), cache_dir, precision, min_centers, max_centers, max_points)
    return TensorRTRunner(data, names, OUTPUT_NAMES)
