"""BatchNorm statistics recomputed over many batches ("precise BN"), for models trained over a compute range.

A scene model is trained with one operating point drawn per batch (points, centers and budget change
from batch to batch), and its BatchNorm running statistics are an exponential average (momentum 0.1)
of the last ~10 batches: whichever points those happened to be. Evaluated or exported at an epoch's
end, the statistics then fit a few points and not the others (measured on the step-5 scene model at
epoch 8: test-split mIoU 34.1 / 32.7 / 32.8 % at p1k / p4k / p16k as trained, 49.4 / 51.7 / 49.0 % after
recomputing them over 32 batches covering every point, docs/results/precise_batchnorm.json).

recompute_batchnorm runs `forward` over a fixed number of batches in the forward the statistics are
meant for, the training one (every module in training mode: BatchNorms unfolded, as the gate and the
tokenizer run while training) but with dropout off and BatchNorm momentum None (a cumulative, equally
weighted mean over the batches), under no_grad; weights are untouched.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object],
                        num_batches: int) -> int:
    """Replace the running mean / variance of every BatchNorm of `model` by their average over the
    first `num_batches` of `batches` (each run through ``forward(model, batch)``); returns the number
    of batches used (0: nothing changed, e.g. no BatchNorm or no batch). The model is left in eval mode."""
    bns = batchnorms(model)
    if not bns or num_batches < 1:
        model.eval()
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                   # cumulative moving average: every batch weighs the same
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            forward(model, batch)
            used += 1
    finally:
        model.eval()
        for m, (mean, var, count, momentum) in zip(bns, saved):
            m.momentum = momentum
            if used == 0:                   # nothing seen: keep the statistics it had
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    return used
