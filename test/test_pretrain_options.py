"""Pre-training options of issue 14: the fast path (context-only tokenization, batched predictor, native
grouping, CPU bf16), predictors that cannot read targets from absolute positions, and the Point-MAE control."""
import dataclasses

import pytest
import torch

from foundry_core.data.sources import make_datasets
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.jepa import JEPAPredictor, PointJEPA, masked_view
from foundry_core.models.mae import PointMAE, chamfer_l2
from foundry_core.stages.common import eval_view
from foundry_core.stages.pretrain import PretrainTask, build_pretrain_model, run_pretrain
from foundry_core.checkpoint import load_checkpoint
from foundry_core.typed_yaml import ConfigError
from foundry_core.train.trainer import Trainer

from support.configs import tiny_jepa, tiny_model, tiny_pretrain

FAST = dict(context_tokens_only=True, predictor_batched=True, native_grouping=True, cpu_bf16=True)


def jepa(**kw) -> PointJEPA:
    torch.manual_seed(0)
    return PointJEPA(PointBackbone(tiny_model()), tiny_jepa(**kw))


def loss_with_seed(model, points, seed=3):
    torch.manual_seed(seed)
    return model(points)


def test_context_only_tokenization_computes_the_same_loss():
    """With BatchNorm on running statistics the online mini-PointNet on the context groups alone is the
    same function as on every group; in training mode it still gets gradients."""
    points = torch.randn(3, 128, 3)
    full, ctx_only = jepa(), jepa(context_tokens_only=True)
    for m in (full, ctx_only):
        m.backbone.eval()                       # BN on running statistics: no dependence on the group subset
    torch.testing.assert_close(loss_with_seed(ctx_only, points), loss_with_seed(full, points))
    ctx_only.train()
    loss_with_seed(ctx_only, points).backward()
    assert ctx_only.backbone.tokenizer.encoder.first.fc1.weight.grad.abs().sum() > 0
    assert ctx_only.backbone.tokenizer.pos_embed.mlp[0].weight.grad.abs().sum() > 0


def test_native_grouping_gives_the_same_groups_and_loss():
    points = torch.randn(2, 256, 3)
    torch.testing.assert_close(loss_with_seed(jepa(native_grouping=True), points), loss_with_seed(jepa(), points))


def test_batched_predictor_shapes_isolates_blocks_and_trains():
    pred = JEPAPredictor(dim=32, pdim=16, depth=2, heads=2)
    ctx, ctx_pos, tgt_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 3), torch.randn(2, 3, 4, 3)
    out = pred.forward_blocks(ctx, ctx_pos, tgt_pos)
    assert out.shape == (2, 3, 4, 32)
    moved = tgt_pos.clone()
    moved[:, 2] += 1.0                                        # move block 2 only
    out2 = pred.forward_blocks(ctx, ctx_pos, moved)
    torch.testing.assert_close(out2[:, :2], out[:, :2])       # blocks 0, 1 never see block 2
    assert not torch.allclose(out2[:, 2], out[:, 2])
    out.sum().backward()
    assert pred.mask_token.grad.abs().sum() > 0 and pred.embed.weight.grad.abs().sum() > 0


def test_context_relative_positions_ignore_a_shift_of_the_cloud():
    model = jepa(predictor_pos="context_relative")
    points = torch.randn(2, 128, 3)
    torch.manual_seed(1)
    view = masked_view(model.backbone, points, model.cfg)
    ctx_c, tgt_c = view.predictor_positions()
    shifted = dataclasses.replace(view, centers_seq=view.centers_seq + torch.tensor([3.0, -1.0, 2.0]))
    for a, b in zip(shifted.predictor_positions(), (ctx_c, tgt_c)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ctx_c.mean(1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    absolute = dataclasses.replace(view, cfg=tiny_jepa())
    assert not torch.allclose(absolute.predictor_positions()[1], tgt_c)


def test_target_position_noise_only_while_training():
    model = jepa(target_pos_noise=0.1)
    torch.manual_seed(1)
    view = masked_view(model.backbone, torch.randn(2, 128, 3), model.cfg)
    exact = dataclasses.replace(view, training=False).predictor_positions()[1]
    noisy = view.predictor_positions()[1]
    assert view.training and 0.05 < (noisy - exact).std() < 0.2
    clean = dataclasses.replace(view, cfg=tiny_jepa()).predictor_positions()[1]
    torch.testing.assert_close(clean, exact)


def test_bf16_step_returns_a_float32_loss_with_gradients(monkeypatch):
    import foundry_core.stages.pretrain as stage
    monkeypatch.setattr(stage, "use_cpu_bf16", lambda requested: requested)   # the bf16 path, on any CPU
    cfg = tiny_pretrain("unused")
    cfg.jepa = tiny_jepa(**FAST)
    torch.manual_seed(0)
    model = build_pretrain_model(cfg)
    task = PretrainTask(cfg, None, None)
    loss, _ = task.step(model, {"points": torch.randn(4, 128, 3)})
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert model.backbone.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_chamfer_is_zero_on_a_permuted_copy_and_positive_otherwise():
    a = torch.randn(5, 8, 3)
    assert chamfer_l2(a[:, torch.randperm(8)], a).item() == pytest.approx(0.0, abs=1e-6)
    assert chamfer_l2(a + 0.1, a).item() > 0


def test_mae_shapes_gradients_and_no_ema_branch():
    torch.manual_seed(0)
    model = PointMAE(PointBackbone(tiny_model()), tiny_jepa())
    assert model.target is model.backbone
    assert not any(k.startswith("target.") for k in model.state_dict())
    assert model.head.out_features == tiny_model().group_size * 3
    loss = model(torch.randn(3, 128, 3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.tokenizer.encoder.first.fc1.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0 and model.predictor.mask_token.grad.abs().sum() > 0
    assert model.update_target(1, 10) == 0.0


@pytest.mark.parametrize("jepa_kw", [dict(objective="mae"),
                                     dict(FAST, predictor_pos="context_relative", target_pos_noise=0.05),
                                     dict(FAST, vc_weight=0.05), dict(FAST, target_layers=2)])
def test_tiny_runs_lower_their_loss(tmp_path, jepa_kw):
    cfg = tiny_pretrain(tmp_path, epochs=4)
    cfg.jepa = dataclasses.replace(cfg.jepa, **jepa_kw)
    res = run_pretrain(cfg)
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "backbone.safetensors").exists()


def make_trainer(cfg):
    train, test = make_datasets(cfg.data, cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    model = build_pretrain_model(cfg)
    return Trainer(cfg.run, cfg.optim, model, PretrainTask(cfg, eval_view(train), test), train, "pretrain", {})


@pytest.mark.parametrize("jepa_kw", [dict(FAST, predictor_pos="context_relative", target_pos_noise=0.05),
                                     dict(objective="mae", cpu_bf16=True), dict(FAST, target="position_residual"),
                                     dict(FAST, vc_weight=0.05), dict(FAST, target_layers=2),
                                     dict(FAST, freeze_pos_embed=True), dict(FAST, frozen_blocks=1)])
def test_resume_is_bit_for_bit_with_the_new_options(tmp_path, jepa_kw):
    def cfg(out):
        c = tiny_pretrain(tmp_path / out, epochs=2)
        c.jepa = dataclasses.replace(c.jepa, **jepa_kw)
        return c
    full = make_trainer(cfg("full")).fit()
    make_trainer(cfg("cut")).fit(stop_after=1)
    resumed = make_trainer(cfg("cut")).fit(resume=True)
    assert [h["train_loss"] for h in full] == [h["train_loss"] for h in resumed]
    ta, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    tb, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    for k in ta:
        if k.startswith("model."):
            assert torch.equal(ta[k], tb[k]), k


def test_position_residual_removes_what_position_explains_and_keeps_the_rest():
    from foundry_core.models.jepa import position_residual
    torch.manual_seed(0)
    pos, content = torch.randn(4, 32, 8), torch.randn(4, 32, 6)
    mix = torch.randn(8, 6)
    res = position_residual(pos @ mix + 2.0 + content, pos)
    assert res.shape == (4, 32, 6) and res.dtype == torch.float32
    assert (res - content).pow(2).mean() < 0.1 * content.pow(2).mean()     # the linear-in-position part is gone
    tokens = pos @ mix + content
    with torch.autocast("cpu", dtype=torch.bfloat16):                       # the fit stays float32 under bf16
        in_bf16 = position_residual(tokens, pos)
    assert in_bf16.dtype == torch.float32
    torch.testing.assert_close(in_bf16, position_residual(tokens, pos))


def test_position_residual_targets_train_the_context_encoder():
    model = jepa(target="position_residual", **FAST)
    loss = model(torch.randn(3, 128, 3))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.tokenizer.encoder.first.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target.parameters())
    points = torch.randn(2, 128, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(loss_with_seed(model, points), loss_with_seed(jepa(**FAST), points))   # same init


def test_position_residual_loss_falls_on_a_fixed_batch():
    """The residual targets are learnable: steps on one batch (same masks) lower the loss. (A tiny run of
    a few epochs does not: what position explains is exactly what such a run learns first.)"""
    model = jepa(target="position_residual", **FAST)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    points = torch.randn(4, 128, 3, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(25):
        loss = loss_with_seed(model, points)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_extra_data_adds_unlabelled_training_clouds_and_the_probe_reads_only_data(tmp_path):
    from foundry_core.data.sources import load_splits, pretraining_set, with_unlabelled
    from support.configs import tiny_data
    cfg = tiny_pretrain(tmp_path, epochs=1)
    cfg.run.eval_every = 1
    more = tiny_data(synthetic_shapes=30, synthetic_seed=7)
    cfg.extra_data = [more]
    train, _ = load_splits(cfg.data)
    more_train, more_test = load_splits(more)
    mixed = with_unlabelled(train, cfg.extra_data)
    assert len(mixed) == len(train) + len(more_train) and len(more_test) > 0       # training split only
    assert (mixed.labels[:len(train)] == train.labels).all() and (mixed.labels[len(train):] == -1).all()
    assert with_unlabelled(train, []) is train
    ds = pretraining_set(cfg.data, train, cfg.extra_data, 0)
    assert len(ds) == len(mixed) and ds[len(train)]["points"].shape == (cfg.data.num_points, 3)
    seen = {}
    init = PretrainTask.__init__

    def spy(self, cfg_, probe_train, probe_test):
        seen["probe_train"] = probe_train
        init(self, cfg_, probe_train, probe_test)

    PretrainTask.__init__ = spy
    try:
        res = run_pretrain(cfg)
    finally:
        PretrainTask.__init__ = init
    assert len(seen["probe_train"]) == len(train) and (seen["probe_train"].shapes.labels >= 0).all()
    assert "probe_acc" in res["history"][-1]


def test_variance_covariance_is_zero_when_spread_and_large_when_collapsed():
    from foundry_core.models.jepa import variance_covariance
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, 16, generator=g) * 1.5                    # decorrelated, std 1.5
    collapsed = torch.randn(4096, 1, generator=g) @ torch.ones(1, 16) * 0.1   # one direction, std 0.1
    assert variance_covariance(spread) < 0.05
    assert variance_covariance(collapsed) > 0.8                       # variance hinge ~0.9 alone
    assert variance_covariance(collapsed.view(64, 64, 16)).item() == pytest.approx(variance_covariance(collapsed).item())
    with pytest.raises(Exception, match="vc_weight"):
        tiny_jepa(vc_weight=-1.0)


def test_variance_covariance_term_trains_the_context_encoder():
    from foundry_core.models.jepa import variance_covariance
    points = torch.randn(3, 128, 3, generator=torch.Generator().manual_seed(4))
    plain, with_vc = jepa(**FAST), jepa(vc_weight=1.0, **FAST)
    assert loss_with_seed(with_vc, points) > loss_with_seed(plain, points)     # added (same init, same masks)
    torch.manual_seed(3)
    variance_covariance(masked_view(with_vc.backbone, points, with_vc.cfg).ctx).backward()
    assert with_vc.backbone.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_layer_averaged_targets_mean_of_normed_blocks():
    from foundry_core.models.jepa import layer_averaged_targets
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(2, 5, 8, generator=g) * (i + 1) + i for i in range(4)]
    assert layer_averaged_targets(hidden, 1) is hidden[-1]                 # Point-JEPA: the last block as it is
    two = layer_averaged_targets(hidden, 2)
    norm = torch.nn.functional.layer_norm
    torch.testing.assert_close(two, (norm(hidden[2], (8,)) + norm(hidden[3], (8,))) / 2)
    assert two.shape == (2, 5, 8) and two.dtype == torch.float32
    with pytest.raises(ValueError, match="target_layers"):
        layer_averaged_targets(hidden, 5)
    with pytest.raises(Exception, match="target_layers"):
        tiny_jepa(target_layers=0)


def test_layer_averaged_targets_change_the_loss_and_train_the_context_encoder():
    points = torch.randn(3, 128, 3, generator=torch.Generator().manual_seed(5))
    last, averaged = jepa(**FAST), jepa(target_layers=2, **FAST)           # same init, same masks
    loss = loss_with_seed(averaged, points)
    assert not torch.allclose(loss, loss_with_seed(last, points))
    loss.backward()
    assert averaged.backbone.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in averaged.target.parameters())


def test_cpu_bf16_only_where_the_cpu_has_native_bf16(tmp_path, monkeypatch, caplog):
    from foundry_core.train import cpu_bf16
    amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    amx.write_text("processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n")
    avx2.write_text("processor : 0\nflags : fpu avx2 fma\n")
    assert cpu_bf16.native_cpu_bf16(str(amx)) and not cpu_bf16.native_cpu_bf16(str(avx2))
    for native in (False, True):
        monkeypatch.setattr(cpu_bf16, "native_cpu_bf16", lambda native=native: native)
        cpu_bf16.use_cpu_bf16.cache_clear()
        with caplog.at_level("WARNING"):
            assert cpu_bf16.use_cpu_bf16(True) is native
        assert ("no native bfloat16" in caplog.text) is (not native)
        assert cpu_bf16.use_cpu_bf16(False) is False
        caplog.clear()
    cpu_bf16.use_cpu_bf16.cache_clear()


def test_frozen_positional_embedding_stays_at_init_while_the_rest_trains(tmp_path):
    cfg = tiny_pretrain(tmp_path, epochs=2)
    cfg.jepa = dataclasses.replace(cfg.jepa, **FAST, freeze_pos_embed=True)
    trainer = make_trainer(cfg)
    model = trainer.model
    pos0 = {k: v.clone() for k, v in model.backbone.tokenizer.pos_embed.state_dict().items()}
    block0 = model.backbone.encoder.blocks[0].attn.qkv.weight.detach().clone()
    trainer.fit()
    for k, v in model.backbone.tokenizer.pos_embed.state_dict().items():
        assert torch.equal(v, pos0[k]), k                                        # online: untouched
        torch.testing.assert_close(model.target.tokenizer.pos_embed.state_dict()[k], pos0[k])   # EMA of equal weights
    assert not torch.equal(model.backbone.encoder.blocks[0].attn.qkv.weight, block0)          # the rest trains
    assert all(not p.requires_grad for p in model.backbone.tokenizer.pos_embed.parameters())


def test_frozen_blocks_stay_at_init_in_both_encoders_while_the_blocks_above_train(tmp_path):
    cfg = tiny_pretrain(tmp_path, epochs=2)
    cfg.jepa = dataclasses.replace(cfg.jepa, **FAST, frozen_blocks=1)
    trainer = make_trainer(cfg)
    model = trainer.model
    blocks = model.backbone.encoder.blocks
    assert len(blocks) >= 2
    first = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    second = blocks[1].attn.qkv.weight.detach().clone()
    trainer.fit()
    for k, v in blocks[0].state_dict().items():
        assert torch.equal(v, first[k]), k                                               # online: untouched
        torch.testing.assert_close(model.target.encoder.blocks[0].state_dict()[k], first[k])  # EMA of equal weights
    assert not torch.equal(blocks[1].attn.qkv.weight, second)                            # the block above trains
    assert all(not p.requires_grad for p in blocks[0].parameters())


def test_frozen_blocks_beyond_the_encoder_depth_is_a_config_error(tmp_path):
    cfg = tiny_pretrain(tmp_path, epochs=1)
    cfg.jepa = dataclasses.replace(cfg.jepa, frozen_blocks=len(PointBackbone(cfg.model).encoder.blocks) + 1)
    with pytest.raises(ConfigError, match="frozen_blocks"):
        build_pretrain_model(cfg)
    with pytest.raises(ConfigError, match="frozen_blocks"):
        dataclasses.replace(cfg.jepa, frozen_blocks=-1)
