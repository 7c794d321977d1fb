"""BatchNorm statistics recomputed over many batches (train/precise_batchnorm.py) and its use by
fine-tuning over operating points (SupervisedTask.recalibrate_batchnorm)."""
from __future__ import annotations

import torch
from torch import nn

from foundry_core.configs import OperatingPoint
from foundry_core.data.sources import make_datasets
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.build import build_task_model
from foundry_core.stages.finetune import SupervisedTask
from foundry_core.train.precise_batchnorm import batchnorms, recompute_batchnorm

from support.configs import tiny_finetune


def two_regime_batches(n: int = 6) -> list[torch.Tensor]:
    """Batches (8, 4) alternating between mean 0 and mean 10 (two operating points' statistics)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 4, generator=g) + (10.0 if i % 2 else 0.0) for i in range(n)]


def test_statistics_become_the_mean_over_every_batch_and_weights_stay():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net.train()
    batches = two_regime_batches()
    with torch.no_grad():
        for b in batches + batches[1::2] * 5:          # training ends on a run of the mean-10 regime
            net(b)
    weight = net[0].weight.clone()
    biased = net[1].running_mean.clone()
    used = recompute_batchnorm(net, batches, lambda m, b: m(b), num_batches=len(batches))
    with torch.no_grad():
        means = torch.stack([net[0](b).mean(0) for b in batches]).mean(0)
    assert used == len(batches) and not net.training and not net[1].training
    assert torch.allclose(net[1].running_mean, means, atol=1e-5)
    assert (net[1].running_mean - means).abs().max() < (biased - means).abs().max()
    assert torch.equal(net[0].weight, weight) and net[1].momentum == 0.1


def test_no_batch_keeps_the_statistics():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    net[1].running_mean.fill_(3.0)
    assert recompute_batchnorm(net, [], lambda m, b: m(b), num_batches=4) == 0
    assert torch.all(net[1].running_mean == 3.0) and not net.training
    assert recompute_batchnorm(nn.Linear(2, 2), two_regime_batches(), lambda m, b: None, num_batches=4) == 0


def test_finetuning_over_operating_points_recomputes_them_without_touching_the_training_rng(tmp_path):
    ops = [OperatingPoint(name="low", points=48, centers=8), OperatingPoint(name="high", points=128, centers=16)]
    cfg = tiny_finetune(tmp_path, task="sceneseg", operating_points=ops, bn_recalibration_batches=3)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    model = build_task_model(cfg, PointBackbone(cfg.model), train_set.shapes)
    task = SupervisedTask(cfg, test_set, train_set=train_set)
    before = [m.running_var.clone() for m in batchnorms(model)]
    rng = torch.get_rng_state()
    assert task.recalibrate_batchnorm(model, epoch=0) == 3
    assert torch.equal(torch.get_rng_state(), rng)
    assert any(not torch.allclose(b, m.running_var) for b, m in zip(before, batchnorms(model)))
    off = SupervisedTask(tiny_finetune(tmp_path, task="sceneseg", operating_points=ops, bn_recalibration_batches=0),
                         test_set, train_set=train_set)
    assert off.recalibrate_batchnorm(model, epoch=0) == 0
    assert SupervisedTask(cfg, test_set).recalibrate_batchnorm(model, epoch=0) == 0   # no training set given
