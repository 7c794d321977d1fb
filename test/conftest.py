"""Shared fixtures (helpers and tiny configs live in the `support` package)."""
from __future__ import annotations

import pytest
import torch

from support.configs import tiny_pretrain


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def single_thread(_threads):
    """Tiny tensors: one intra-op thread (OpenMP contention with a concurrent job costs 100x, and two
    threads gain nothing on these sizes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A tiny teacher backbone pre-trained for one epoch (shared by the distillation tests)."""
    from foundry_core.stages.pretrain import run_pretrain
    out = tmp_path_factory.mktemp("teacher")
    return run_pretrain(tiny_pretrain(out, epochs=1))["backbone"]


@pytest.fixture(autouse=True, scope="session")
def _foundry_cache(tmp_path_factory):
    """ONNX exports and engines of the tests go to a temporary cache, never ~/.cache."""
    import os
    os.environ["FOUNDRY_CACHE_DIR"] = str(tmp_path_factory.mktemp("foundry_cache"))
