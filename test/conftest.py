"""Shared fixtures: tiny configs that train in seconds on a 2-core CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support import SHARED_DATA  # noqa: F401  (re-exported for the tests that skip without ../shared)
from support.configs import tiny_pretrain



@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


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
