import json

import pytest
import torch

from foundry_core.configs import PretrainConfig
from foundry_core.data.sources import make_datasets
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.io import load_backbone, save_backbone
from foundry_core.models.jepa import PointJEPA
from foundry_core.stages.common import eval_view
from foundry_core.stages.pretrain import PretrainTask
from foundry_core.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from foundry_core.train.trainer import Trainer, lr_at

from support.configs import tiny_model, tiny_pretrain


def make_trainer(cfg: PretrainConfig) -> Trainer:
    train, test = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(123)  # deliberately different from the run seed: setup must re-seed
    model = PointJEPA(PointBackbone(cfg.model), cfg.jepa)
    return Trainer(cfg.run, cfg.optim, model, PretrainTask(cfg, eval_view(train), test), train, "pretrain", {})


def test_resume_continues_bit_for_bit(tmp_path):
    full = make_trainer(tiny_pretrain(tmp_path / "full", epochs=3)).fit()
    make_trainer(tiny_pretrain(tmp_path / "cut", epochs=3)).fit(stop_after=1)       # "interrupted"
    resumed = make_trainer(tiny_pretrain(tmp_path / "cut", epochs=3)).fit(resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(full, resumed):
        assert a["train_loss"] == b["train_loss"]          # exactly the same losses after resuming
    ta, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    tb, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    for k in ta:
        if k.startswith("model."):
            assert torch.equal(ta[k], tb[k]), k


def test_run_writes_metrics_plot_and_atomic_checkpoint(tmp_path):
    make_trainer(tiny_pretrain(tmp_path, epochs=1)).fit()
    hist = json.loads((tmp_path / "metrics.json").read_text())
    assert hist[0]["epoch"] == 1 and "train_loss" in hist[0] and "probe_acc" in hist[0]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch") or "train_loss" in (tmp_path / "metrics.csv").read_text()
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))                 # nothing half-written left behind
    meta = read_meta(tmp_path / "last.safetensors")
    assert meta["stage"] == "pretrain" and meta["epoch"] == 0


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    good = save_backbone(tmp_path / "bb.safetensors", PointBackbone(tiny_model()))
    data = bytearray(good.read_bytes())
    good.with_name("trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_backbone(good.with_name("trunc.safetensors"))
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a Foundry checkpoint"):
        load_backbone(tmp_path / "foreign.safetensors")
    save_checkpoint(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {"kind": "something"})
    with pytest.raises(CheckpointError, match="not a backbone"):
        load_backbone(tmp_path / "other.safetensors")


def test_backbone_roundtrip_and_shape_mismatch(tmp_path):
    bb = PointBackbone(tiny_model()).eval()
    path = save_backbone(tmp_path / "bb.safetensors", bb)
    loaded = load_backbone(path).eval()
    x = torch.randn(2, 128, 3)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(bb(x, generator=g1).last, loaded(x, generator=g2).last)
    tensors, meta = load_checkpoint(path)
    meta["model"]["dim"] = 64
    save_checkpoint(tmp_path / "mismatch.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(tmp_path / "mismatch.safetensors")


def test_resume_refuses_checkpoint_of_another_stage(tmp_path):
    save_checkpoint(tmp_path / "last.safetensors", {"x": torch.zeros(1)}, {"stage": "finetune_cls"})
    with pytest.raises(CheckpointError, match="cannot resume"):
        make_trainer(tiny_pretrain(tmp_path, epochs=1)).fit(resume=True)


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny_pretrain("x", epochs=10).optim
    lrs = [lr_at(s, 100, 10, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.01 * cfg.lr
