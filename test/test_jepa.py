
import pytest
import torch

from foundry_core.configs import JEPAConfig
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.jepa import PointJEPA, ema_momentum, ema_update, sample_blocks, sequence_centers
from foundry_core.stages.pretrain import run_pretrain

from support.configs import tiny_jepa, tiny_model, tiny_pretrain


def test_sequencer_is_greedy_nearest_from_min_sum():
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(3, 20, 3, generator=g)
    order = sequence_centers(centers)
    for b in range(3):
        seq = order[b].tolist()
        assert sorted(seq) == list(range(20))                       # a permutation
        assert seq[0] == int(centers[b].sum(-1).argmin())
        for i in range(1, 20):                                      # each step: nearest unvisited
            rest = [j for j in range(20) if j not in seq[:i]]
            d = ((centers[b, rest] - centers[b, seq[i - 1]]) ** 2).sum(-1)
            assert seq[i] == rest[int(d.argmin())]


@pytest.mark.parametrize("c", [16, 64])
def test_block_sampler_sizes_and_contiguity(c):
    cfg = JEPAConfig()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        targets, context = sample_blocks(c, 5, cfg, generator=g)
        b, m, lt = targets.shape
        assert (b, m) == (5, 4)
        assert round(c * 0.15) <= lt <= round(c * 0.2) + 1
        assert (targets.diff(dim=-1) == 1).all()                    # contiguous runs
        assert targets.min() >= 0 and targets.max() < c
        assert context.shape[0] == 5 and context.shape[1] >= 1
        for i in range(5):
            ctx = set(context[i].tolist())
            assert len(ctx) == context.shape[1]                      # no duplicates
            assert not ctx & set(targets[i].flatten().tolist())      # disjoint from targets
            assert (context[i].diff() > 0).all()                    # kept in sequence order


def test_ema_update_math():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, before, o in zip(target.parameters(), t0, online.parameters()):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * o)
    assert ema_momentum(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert ema_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert ema_momentum(200, 100, 0.99, 1.0) == pytest.approx(1.0)


def test_jepa_forward_gradients_only_reach_online_branch():
    model = PointJEPA(PointBackbone(tiny_model()), tiny_jepa())
    loss = model(torch.randn(4, 128, 3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert model.predictor.mask_token.grad is not None


def test_tiny_pretraining_lowers_loss(tmp_path):
    res = run_pretrain(tiny_pretrain(tmp_path, epochs=4))
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "backbone.safetensors").exists()
    assert 0 <= res["history"][-1]["probe_acc"] <= 100
