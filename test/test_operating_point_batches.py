"""Fine-tuning over operating points: one point per batch, drawn uniformly or by operating_point_weights."""
from __future__ import annotations

import collections

import pytest
import torch

from foundry_core.configs import OperatingPoint
from foundry_core.stages.finetune import SupervisedTask
from foundry_core.typed_yaml import ConfigError

from support.configs import tiny_finetune

OPS = [OperatingPoint(name="low", points=32, centers=8), OperatingPoint(name="high", points=128, centers=16)]


def drawn(task: SupervisedTask, n: int = 400) -> collections.Counter:
    points, target = torch.zeros(1, 128, 3), torch.zeros(1, 128, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    return collections.Counter(task.operating_point_batch(points, target, generator=gen)[0].shape[1] for _ in range(n))


def test_weights_set_how_often_each_point_trains(tmp_path):
    uniform = drawn(SupervisedTask(tiny_finetune(tmp_path, task="sceneseg", operating_points=OPS), None))
    weighted = drawn(SupervisedTask(tiny_finetune(tmp_path, task="sceneseg", operating_points=OPS,
                                                  operating_point_weights=[1.0, 3.0]), None))
    assert 150 < uniform[128] < 250                      # ~1/2
    assert 260 < weighted[128] < 340                     # ~3/4
    assert set(weighted) == {32, 128}


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, -2.0]])
def test_bad_weights_are_config_errors(tmp_path, weights):
    with pytest.raises(ConfigError, match="operating_point_weights"):
        tiny_finetune(tmp_path, task="sceneseg", operating_points=OPS, operating_point_weights=weights)
