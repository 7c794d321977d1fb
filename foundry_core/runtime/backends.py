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
