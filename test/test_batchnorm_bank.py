"""BatchNorm statistics per operating point (models/batchnorm_bank.py): computed by fine-tuning's
SupervisedTask on each point's own batches, carried by exported models, and switched to per frame by
the Predictor (PyTorch: copied in and the head re-folded; ONNX Runtime: one graph per point)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundry_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from foundry_core.configs import OperatingPoint
from foundry_core.data.sources import make_datasets
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.batchnorm_bank import BatchNormBank, batchnorm_modules
from foundry_core.models.build import build_task_model
from foundry_core.models.io import load_task_model, save_task_model
from foundry_core.runtime.predictor import Predictor, PredictorConfig
from foundry_core.stages.finetune import SupervisedTask
from foundry_core.typed_yaml import ConfigError

from support.configs import tiny_finetune
from support.exports import export_task_model

OPS = [{"name": "low", "points": 96, "centers": 8, "budget": 4}, {"name": "high", "points": 256, "centers": 16, "budget": 8}]


def _shifted_bank(model, names=("low",), shift=0.7) -> BatchNormBank:
    """A bank whose points' statistics differ clearly from the model's shared ones."""
    bank = BatchNormBank()
    for i, name in enumerate(names):
        bank.record(name, model)
        for mean, var in bank.stats[name].values():
            mean.add_(shift * (i + 1))
            var.mul_(1.5 + i)
    return bank


@pytest.fixture()
def banked_model(tmp_path):
    """(path of a tiny sceneseg model with a bank for "low", path of the same model with the "low"
    statistics as its shared ones)."""
    path = export_task_model(tmp_path, operating_points=OPS, point_geometry=True)
    model, meta = load_task_model(path)
    keep = {k: v for k, v in meta.items() if k not in ("kind", "model")}
    model.batchnorm_bank = _shifted_bank(model)
    banked = save_task_model(tmp_path / "banked.safetensors", model, model.backbone.cfg, keep)
    model.batchnorm_bank.apply(model, "low")
    model.batchnorm_bank = None
    plain_low = save_task_model(tmp_path / "low_shared.safetensors", model, model.backbone.cfg, keep)
    return str(banked), str(plain_low), path


def _cloud(n=3000, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3)).astype(np.float32)


def test_bank_round_trips_through_an_exported_model(banked_model):
    banked, _, _ = banked_model
    model, meta = load_task_model(banked)
    assert meta["batchnorm_bank"] == ["low"] and model.batchnorm_bank.points == ["low"]
    assert set(model.batchnorm_bank.stats["low"]) == set(batchnorm_modules(model))
    tensors, meta = load_checkpoint(banked)                   # a bank listed but missing is an error
    broken = {k: v for k, v in tensors.items() if not k.startswith("batchnorm_bank.low.")}
    save_checkpoint(banked + ".broken.safetensors", broken, meta)
    with pytest.raises(CheckpointError, match="BatchNorm bank"):
        load_task_model(banked + ".broken.safetensors")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_predictor_runs_each_point_with_its_own_statistics(banked_model, backend, tmp_path):
    banked, plain_low, plain = banked_model
    cfg = PredictorConfig(backend=backend, cache_dir=str(tmp_path / "cache"))
    pred = Predictor.from_checkpoint(banked, cfg)
    ref_low = Predictor.from_checkpoint(plain_low, cfg)          # "low" statistics as the shared ones
    ref_shared = Predictor.from_checkpoint(plain, cfg)           # the model without a bank
    x = _cloud()
    for op in ["low", "high", "low"]:                           # switching back and forth
        out = pred(x, operating_point=op)
        ref = (ref_low if op == "low" else ref_shared)(x, operating_point=op)
        np.testing.assert_array_equal(out.labels, ref.labels)
        np.testing.assert_allclose(out.confidence, ref.confidence, atol=2e-4)
    assert not np.array_equal(pred(x, operating_point="low").confidence, ref_shared(x, operating_point="low").confidence)
    if backend == "onnxruntime":
        assert pred.backend.startswith("onnxruntime")
        assert len(list((tmp_path / "cache" / "onnx").glob("*-bn-low-*.onnx"))) == 1


def test_a_users_single_graph_runs_every_point_with_the_shared_statistics(banked_model, tmp_path, caplog):
    banked, _, plain = banked_model
    cache = str(tmp_path / "cache")
    graph = Predictor.from_checkpoint(banked, PredictorConfig(backend="onnxruntime", cache_dir=cache)).onnx_path()
    pred = Predictor.from_checkpoint(banked, PredictorConfig(backend="onnxruntime", cache_dir=cache,
                                                             onnx_path=str(graph)))
    ref_shared = Predictor.from_checkpoint(plain, PredictorConfig(backend="onnxruntime", cache_dir=cache))
    x = _cloud()
    with caplog.at_level("WARNING", logger="foundry_core.runtime.predictor"):
        for op in ["low", "high", "low"]:                       # no error at the banked point: shared statistics
            np.testing.assert_allclose(pred(x, operating_point=op).confidence,
                                       ref_shared(x, operating_point=op).confidence, atol=2e-4)
    assert sum("one exported graph" in r.getMessage() for r in caplog.records) == 1   # said once


def test_finetuning_computes_each_points_statistics_on_its_own_batches(tmp_path):
    ops = [OperatingPoint(name="low", points=48, centers=8), OperatingPoint(name="high", points=128, centers=16)]
    cfg = tiny_finetune(tmp_path, task="sceneseg", operating_points=ops, bn_recalibration_batches=3,
                        bn_per_operating_point=True)
    train_set, test_set = make_datasets(cfg.data, cfg.run.seed)
    model = build_task_model(cfg, PointBackbone(cfg.model), train_set.shapes)
    task = SupervisedTask(cfg, test_set, train_set=train_set)
    shared = BatchNormBank()
    shared.record("shared", model)
    bank = task.batchnorm_bank(model, epoch=0)
    assert bank.points == ["low", "high"]
    for name, (mean, var) in shared.stats["shared"].items():          # the model keeps its shared statistics
        now = batchnorm_modules(model)[name]
        assert torch.equal(now.running_mean, mean) and torch.equal(now.running_var, var)
    low, high = bank.stats["low"], bank.stats["high"]
    assert any(not torch.allclose(low[n][1], high[n][1]) for n in low)    # the points' statistics differ
    with pytest.raises(ConfigError, match="bn_per_operating_point"):
        tiny_finetune(tmp_path, task="sceneseg", bn_per_operating_point=True)


def test_batchnorm_bank_command_recomputes_only_the_named_points_and_keeps_the_others(banked_model, tmp_path):
    from foundry_core.stages.finetune import run_batchnorm_bank
    banked, _, _ = banked_model
    before, _ = load_task_model(banked)
    ops = [OperatingPoint(name="low", points=48, centers=8), OperatingPoint(name="high", points=128, centers=16)]
    cfg = tiny_finetune(tmp_path / "bank", task="sceneseg", operating_points=ops, bn_recalibration_batches=2)
    out = run_batchnorm_bank(banked, cfg, tmp_path / "added.safetensors", only=["high"])
    model, meta = load_task_model(out)
    assert model.batchnorm_bank.points == ["low", "high"]
    assert [op["name"] for op in meta["operating_points"]] == ["low", "high"]      # the config's list
    for name, (mean, var) in before.batchnorm_bank.stats["low"].items():            # kept as it was
        kept = model.batchnorm_bank.stats["low"][name]
        assert torch.equal(kept[0], mean) and torch.equal(kept[1], var)
    high = model.batchnorm_bank.stats["high"]
    shared = batchnorm_modules(model)
    assert any(not torch.allclose(high[n][0], shared[n].running_mean) for n in high)  # recomputed on its batches
    with pytest.raises(ConfigError, match="not among"):
        run_batchnorm_bank(banked, cfg, tmp_path / "x.safetensors", only=["nope"])
    with pytest.raises(ConfigError, match="no BatchNorm statistics to keep"):
        run_batchnorm_bank(banked, cfg, tmp_path / "x.safetensors", only=["low"])
