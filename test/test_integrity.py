"""Damaged weights and diverging training are clear errors, never silent garbage: checksummed,
finite checkpoints; a NaN loss stops the run with nothing exported; NaN outputs are an error frame;
an interrupted checkpoint write leaves no temporary file behind after the next start."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from foundry_core import cli
from foundry_core.checkpoint import (FORMAT, CheckpointError, load_checkpoint, remove_stale_temp_files,
                                     save_checkpoint)
from foundry_core.runtime.predictor import Predictor
from foundry_core.runtime.types import NonFiniteOutputError
from foundry_core.stages.pretrain import PretrainTask, run_pretrain
from foundry_core.train.trainer import NonFiniteLossError
from foundry_core.typed_yaml import to_dict
from support.configs import tiny_pretrain
from support.exports import cloud, export_task_model, scene_pre


def _tensors():
    torch.manual_seed(0)
    return {"layer.weight": torch.randn(64, 32), "layer.bias": torch.zeros(64), "steps": torch.arange(5)}


def _write_unchecked(path, tensors, meta):
    """A checkpoint as an older or foreign writer would make it: no checksum, no finiteness check."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": FORMAT, "meta": json.dumps(meta)})


def test_an_intact_checkpoint_round_trips(tmp_path):
    t = _tensors()
    save_checkpoint(tmp_path / "ok.safetensors", t, {"kind": "x"})
    back, meta = load_checkpoint(tmp_path / "ok.safetensors")
    assert meta == {"kind": "x"} and all(torch.equal(back[k], t[k]) for k in t)


def test_one_flipped_bit_in_the_data_is_a_load_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "x"})
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10                                  # one bit of one weight: still a finite float
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_nan_weights_are_a_load_error_and_are_never_written(tmp_path):
    t = _tensors()
    t["layer.weight"][3:9] = float("nan")
    _write_unchecked(tmp_path / "nan.safetensors", t, {"kind": "x"})
    with pytest.raises(CheckpointError, match=r"non-finite.*layer\.weight \(192 of 2048\)"):
        load_checkpoint(tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="refusing to write"):
        save_checkpoint(tmp_path / "out.safetensors", t, {"kind": "x"})
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob("out.safetensors.*"))


def _damage(path, out, fill=float("nan")):
    """A copy of a checkpoint with a NaN region in its first 2-D weight (written without checks)."""
    tensors, meta = load_checkpoint(path)
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[name][:2] = fill
    _write_unchecked(out, tensors, meta)
    return out


def test_predictor_refuses_damaged_weights(tmp_path):
    good = export_task_model(tmp_path)
    with pytest.raises(CheckpointError, match="non-finite"):
        Predictor.from_checkpoint(_damage(good, tmp_path / "nan.safetensors"), preprocess=scene_pre())
    flipped = tmp_path / "flip.safetensors"
    data = bytearray(open(good, "rb").read())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|corrupt"):
        Predictor.from_checkpoint(flipped, preprocess=scene_pre())


def test_non_finite_logits_are_an_error_not_a_result(tmp_path):
    pred = Predictor.from_checkpoint(export_task_model(tmp_path), preprocess=scene_pre(), backend="torch",
                                     fold_head=False)
    assert np.isfinite(pred(cloud(800)).confidence).all()
    with torch.no_grad():
        pred.head.mlp[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="non-finite logits"):
        pred(cloud(800))


def test_finetune_from_a_damaged_backbone_is_a_clear_cli_error(tmp_path, capsys):
    teacher = run_pretrain(tiny_pretrain(tmp_path / "pre", epochs=1))["backbone"]
    bad = _damage(teacher, tmp_path / "bad_backbone.safetensors")
    rc = cli.main(["finetune", "--config", "config/finetune_synthetic.yaml", "--init", str(bad),
                   "--set", f"run.out_dir={tmp_path / 'ft'}", "--set", "optim.epochs=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "non-finite" in err and "Traceback" not in err
    assert not (tmp_path / "ft" / "model.safetensors").exists()


def test_a_nan_loss_stops_training_with_nothing_exported(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    step = PretrainTask.step

    def diverging(self, net, batch):
        loss, metrics = step(self, net, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] >= 3 else loss), metrics

    monkeypatch.setattr(PretrainTask, "step", diverging)
    cfg = tiny_pretrain(tmp_path / "run", epochs=2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan.*nothing exported"):
        run_pretrain(cfg)
    assert not (tmp_path / "run" / "backbone.safetensors").exists()
    (tmp_path / "cfg.yaml").write_text(json.dumps(to_dict(cfg)))
    calls["n"] = 0
    assert cli.main(["pretrain", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "non-finite loss" in capsys.readouterr().err
    assert not (tmp_path / "run" / "backbone.safetensors").exists()


def test_an_interrupted_write_is_cleaned_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / "last.safetensors.k3j9x.tmp"      # what kill -9 during save_checkpoint leaves
    stale.write_bytes(b"\0" * 4096)
    other = out / "notes.tmp"
    other.write_text("not ours")
    run_pretrain(tiny_pretrain(out, epochs=1))
    assert not stale.exists() and other.exists()
    assert remove_stale_temp_files(out / "last.safetensors") == []
