"""Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX-BF16).

Without them, PyTorch emulates bf16 on CPU and a training step under bf16 autocast is several
times *slower* than in float32 (measured: a Point-JEPA step of 32 clouds took ~20 s in bf16 against
~2 s in float32 on a 2-core AVX2 EPYC). ``jepa.cpu_bf16`` asks for bf16 only where it pays.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

BF16_FLAGS = ("avx512_bf16", "amx_bf16")        # /proc/cpuinfo flags of native bf16 matmul units


@functools.lru_cache(maxsize=1)
def native_cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list a bf16 matmul unit (Linux /proc/cpuinfo); elsewhere, True when
    torch dispatches to AVX512 kernels (the closest portable hint)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        import torch
        return "AVX512" in torch.backends.cpu.get_cpu_capability()
    return any(f in flags for f in BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def use_cpu_bf16(requested: bool) -> bool:
    """requested, unless this CPU has no native bf16 (then float32, with one warning)."""
    if requested and not native_cpu_bf16():
        log.warning("jepa.cpu_bf16 is set but this CPU has no native bfloat16 matmuls (%s): training in "
                    "float32, which is several times faster here", " / ".join(BF16_FLAGS))
        return False
    return requested
