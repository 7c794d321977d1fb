"""TransformerEncoder presets, hidden states, key-padding mask, DropPath; backbone sizes."""
import functools

import pytest
import torch

from foundry_core.configs import ModelConfig
from foundry_core.models.backbone import PointBackbone, encoder_kwargs
from foundry_core.models.encoder import DropPath, TransformerEncoder, key_padding_bias


@functools.lru_cache(maxsize=None)
def _preset(name):
    # nn.init.trunc_normal_ is made a no-op while building: the presets' init is slow on a busy CPU and
    # irrelevant to shape checks (PyTorch's default Linear init remains).
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t)
        return TransformerEncoder.from_preset(name).eval()


@pytest.mark.parametrize("name,dim,depth,heads", [("vit_s", 384, 12, 6), ("vit_t", 192, 12, 3)])
def test_presets(name, dim, depth, heads):
    enc = _preset(name)
    assert (enc.dim, enc.depth, enc.heads) == (dim, depth, heads)
    assert len(enc.blocks) == depth
    assert all(b.attn.heads == heads and b.attn.qkv.in_features == dim for b in enc.blocks)
    x = torch.randn(1, 8, dim, generator=torch.Generator().manual_seed(0))
    pos = torch.randn(1, 8, dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(x, pos)
    assert out.last.shape == (1, 8, dim)
    assert len(out.hidden) == depth and all(h.shape == (1, 8, dim) for h in out.hidden)
    assert bool(torch.isfinite(out.last).all())
    # last = final LayerNorm of the last hidden state
    torch.testing.assert_close(out.last, enc.norm(out.hidden[-1]))


def test_preset_overrides_and_unknown():
    enc = TransformerEncoder.from_preset("vit_t", depth=2)
    assert (enc.dim, enc.depth, enc.heads, len(enc.blocks)) == (192, 2, 3, 2)
    with pytest.raises(ValueError, match="unknown encoder preset"):
        TransformerEncoder.from_preset("vit_b")


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        TransformerEncoder(dim=30, depth=1, heads=4)


@pytest.mark.parametrize("name,lo,hi", [("vit_s", 21e6, 23e6), ("vit_t", 5e6, 7e6)])
def test_backbone_parameter_count(name, lo, hi, monkeypatch):
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t)
    model = PointBackbone(ModelConfig(encoder=name))
    count = sum(p.numel() for p in model.parameters())
    assert lo <= count <= hi, count
    assert model.dim == {"vit_s": 384, "vit_t": 192}[name] and model.depth == 12


def test_encoder_kwargs():
    kw = encoder_kwargs(ModelConfig(encoder="vit_s", depth=4))
    assert (kw["dim"], kw["depth"], kw["heads"]) == (384, 4, 6)
    kw = encoder_kwargs(ModelConfig(encoder="custom", dim=32, depth=2, heads=2, drop_path=0.1))
    assert (kw["dim"], kw["depth"], kw["heads"], kw["drop_path"]) == (32, 2, 2, 0.1)


def test_encoder_kwargs_unknown_preset_raises_value_error():
    with pytest.raises(ValueError, match="vit_x"):
        encoder_kwargs(ModelConfig(encoder="vit_x"))


def _tiny(drop_path=0.0):
    torch.manual_seed(0)
    return TransformerEncoder(dim=32, depth=2, heads=2, drop_path=drop_path)


def test_keep_mask_isolates_padded_positions():
    enc = _tiny().eval()
    g = torch.Generator().manual_seed(0)
    x, pos = torch.randn(2, 6, 32, generator=g), torch.randn(2, 6, 32, generator=g)
    keep = torch.tensor([[True, True, True, True, False, False],
                         [True, False, True, True, True, True]])
    x2, pos2 = x.clone(), pos.clone()
    x2[~keep] = 100 * torch.randn(int((~keep).sum()), 32, generator=g)
    pos2[~keep] = -50.0
    with torch.no_grad():
        a, b = enc(x, pos, keep), enc(x2, pos2, keep)
        c = enc(x2, pos2)   # without the mask padded tokens are attended to
    torch.testing.assert_close(a.last[keep], b.last[keep], rtol=1e-5, atol=1e-5)
    for ha, hb in zip(a.hidden, b.hidden):
        torch.testing.assert_close(ha[keep], hb[keep], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.last[keep], c.last[keep], atol=1e-3)
    assert not torch.allclose(a.last[~keep], b.last[~keep], atol=1e-3)


def test_key_padding_bias():
    keep = torch.tensor([[True, False, True]])
    bias = key_padding_bias(keep, torch.float32)
    assert bias.shape == (1, 1, 1, 3)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 2] == 0
    assert bool(torch.isfinite(bias).all()) and bias[0, 0, 0, 1] < -1e30


def test_drop_path_identity_in_eval_and_active_in_train():
    x = torch.randn(64, 4, 8, generator=torch.Generator().manual_seed(0))
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    kept = (y != 0).flatten(1).any(-1)
    assert 0 < int(kept.sum()) < 64                      # some samples dropped, some kept
    torch.testing.assert_close(y[kept], x[kept] * 2.0)    # kept ones rescaled by 1 / (1 - p)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_encoder_with_drop_path_is_deterministic_in_eval():
    enc = _tiny(drop_path=0.5).eval()
    g = torch.Generator().manual_seed(1)
    x, pos = torch.randn(3, 5, 32, generator=g), torch.randn(3, 5, 32, generator=g)
    with torch.no_grad():
        torch.manual_seed(0)
        a = enc(x, pos).last
        torch.manual_seed(1)
        b = enc(x, pos).last
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert enc.blocks[-1].drop_path.p == pytest.approx(0.5)
