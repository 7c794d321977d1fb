import os
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from foundry_core.cli import main
from foundry_core.stages.evaluate import run_evaluate
from foundry_core.stages.finetune import run_finetune
from foundry_core.stages.pretrain import run_pretrain
from foundry_core.typed_yaml import to_dict

from support.configs import tiny_data, tiny_finetune, tiny_pretrain


@pytest.mark.slow
def test_finetune_on_generated_shapes_beats_chance(tmp_path):
    cfg = tiny_finetune(tmp_path, epochs=8, head_dropout=0.1, label_smoothing=0.0)
    cfg.optim.lr = 3e-3
    cfg.data = tiny_data(synthetic_shapes=240, num_points=256)
    res = run_finetune(cfg)
    chance = 100 / 10
    assert res["final"]["test_acc"] > 3 * chance
    metrics = run_evaluate(str(tmp_path / "model.safetensors"), cfg.data)
    assert metrics["test_acc"] == pytest.approx(res["final"]["test_acc"])   # exported model reproduces


def test_finetune_from_pretrained_backbone_and_partseg(tmp_path):
    bb = run_pretrain(tiny_pretrain(tmp_path / "pre", epochs=1))["backbone"]
    cfg = tiny_finetune(tmp_path / "seg", task="partseg", epochs=1, init=bb)
    res = run_finetune(cfg)
    assert {"test_miou", "test_instance_miou", "test_point_acc"} <= set(res["final"])
    assert 0 < res["final"]["test_instance_miou"] <= 100


def test_finetune_init_head_continues_from_the_task_models_head(tmp_path):
    import torch
    from foundry_core.models.io import load_task_model
    from foundry_core.typed_yaml import ConfigError
    first = run_finetune(tiny_finetune(tmp_path / "a", task="partseg", epochs=1))
    done = str(tmp_path / "a" / "model.safetensors")
    head0 = load_task_model(done)[0].head.state_dict()
    # zero epochs of training: the continued model is the first one, head included (a new head is not)
    cont = tiny_finetune(tmp_path / "b", task="partseg", epochs=1, init=done, init_head=True)
    cont.optim.lr = 1e-12
    run_finetune(cont)
    head1 = load_task_model(tmp_path / "b" / "model.safetensors")[0].head.state_dict()
    fresh = tiny_finetune(tmp_path / "c", task="partseg", epochs=1, init=done)
    fresh.optim.lr = 1e-12
    run_finetune(fresh)
    head2 = load_task_model(tmp_path / "c" / "model.safetensors")[0].head.state_dict()
    weights = [k for k in head0 if k.endswith("weight")]
    assert all(torch.allclose(head1[k], head0[k], atol=1e-4) for k in weights)
    assert not all(torch.allclose(head2[k], head0[k], atol=1e-4) for k in weights)
    assert first["final"]["test_miou"] > 0
    with pytest.raises(ConfigError, match="head"):        # a head of another shape is refused, clearly
        run_finetune(tiny_finetune(tmp_path / "d", task="partseg", epochs=1, init=done, init_head=True,
                                   seg_hidden=[16, 8]))
    with pytest.raises(ConfigError, match="init_head"):
        tiny_finetune(tmp_path / "e", init_head=True)


def test_cli_lists_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for stage in ("pretrain", "finetune", "evaluate", "experiment", "demo"):
        assert stage in out


def test_cli_bad_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochz: 3\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "epochz" in err and "valid keys" in err
    assert main(["evaluate", "--backbone", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_dataset_names_expected_layout(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  source: modelnet40_h5\n  root: {tmp_path / 'nowhere'}\n  split: loader\n")
    assert main(["finetune", "--config", str(cfg)]) == 2
    assert "layout" in capsys.readouterr().err.lower()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with 2 gloo processes: trains, rank 0 alone writes the checkpoint and backbone."""
    pre = replace(tiny_pretrain(tmp_path / "run", epochs=2, warmup_epochs=0, batch_size=8),
                  data=tiny_data(synthetic_shapes=48))
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(pre)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "foundry_core", "pretrain", "--config", str(cfg)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "last.safetensors").exists()
    assert (tmp_path / "run" / "backbone.safetensors").exists()
    import json
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(hist) == 2                                   # one row per epoch, written once (rank 0)
    from foundry_core.checkpoint import read_meta
    assert read_meta(tmp_path / "run" / "last.safetensors")["world_size"] == 2
    # 48 clouds / 2 ranks / batch 8 = 3 steps per rank per epoch: each rank saw half of the data
    assert proc.stdout.count("[pretrain] epoch") == 2


def test_segmentation_class_weights_favour_rare_classes():
    from types import SimpleNamespace

    import numpy as np

    from foundry_core.configs import FinetuneConfig
    from foundry_core.stages.finetune import segmentation_class_weights
    shapes = SimpleNamespace(seg_classes=["ground", "box", "never"], seg=[np.array([0] * 90 + [1] * 10)])
    assert segmentation_class_weights(FinetuneConfig(task="sceneseg"), shapes) is None
    w = segmentation_class_weights(FinetuneConfig(task="sceneseg", class_weighting="inverse_sqrt"), shapes)
    assert w[2] == 0 and float(w[1] / w[0]) == pytest.approx(3.0) and float(w[:2].mean()) == pytest.approx(1.0)
    inv = segmentation_class_weights(FinetuneConfig(task="sceneseg", class_weighting="inverse"), shapes)
    assert inv[2] == 0 and float(inv[1] / inv[0]) == pytest.approx(9.0) and float(inv[:2].mean()) == pytest.approx(1.0)
    rare = SimpleNamespace(seg_classes=["ground", "sphere"], seg=[np.array([0] * 9999 + [1])])  # 1 in 10,000
    capped = segmentation_class_weights(FinetuneConfig(task="sceneseg", class_weighting="inverse"), rare)
    assert float(capped[1] / capped[0]) == pytest.approx(50.0)  # MAX_CLASS_WEIGHT_RATIO, not 9,999
