"""Token-reduction baselines: random sampling, fewer centers, ToMe, K-Means prototypes."""
import json

import pytest
import torch
import torch.nn.functional as F

from foundry_core.models.backbone import PointBackbone
from foundry_core.models.baselines import (BASELINES, FewerCenters, KMeansPrototypes, RandomTokenSampling,
                                           ToMeBackbone, ToMeEncoder, bipartite_soft_matching, build_baseline,
                                           halving_schedule, merge_wavg, proportional_bias, tome_attention)
from foundry_core.models.encoder import TransformerEncoder
from foundry_core.models.heads import ClassificationHead, SegmentationHead
from foundry_core.models.sampling import knn

from support.configs import tiny_model

DIM, DEPTH, C, K, N = 32, 2, 32, 8, 128


pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(**kw):
    return tiny_model(**{"dim": DIM, "depth": DEPTH, "num_groups": C, "group_size": K, **kw})


def _points(b=2, n=N, seed=0):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return PointBackbone(_cfg()).eval()


@pytest.fixture(scope="module")
def tok(teacher):
    with torch.no_grad():
        return teacher.tokenizer(_points(), generator=_gen())


def _fitted_kmeans(teacher, s=4):
    return KMeansPrototypes.from_teacher(teacher, s).fit(None, _points(b=4, seed=1), batch_size=2)


def _all_baselines(teacher):
    return {"random": RandomTokenSampling.from_teacher(teacher, 8),
            "fewer_centers": FewerCenters.from_teacher(teacher, 4),
            "tome": ToMeBackbone.from_teacher(teacher, r_schedule=[16, 8]),
            "kmeans": _fitted_kmeans(teacher)}


# ------------------------------------------------------------------------------------ all baselines
def test_registry_and_c_slot_outputs_feed_the_heads(teacher):
    models = _all_baselines(teacher)
    assert set(BASELINES) == set(models)
    pts = _points()
    for name, m in models.items():
        assert isinstance(m, BASELINES[name])
        m.eval()
        with torch.no_grad():
            out = m(pts, generator=_gen())
        assert out.last.shape == (2, C, m.dim), name
        assert len(out.encoded.hidden) == DEPTH and all(h.shape == (2, C, m.hidden_dim) for h in out.encoded.hidden)
        assert out.tokens.centers.shape == (2, C, 3)
        assert out.segments.shape == (2, C) and out.segments.dtype == torch.long
        assert out.tokens_in_encoder.shape == (2,)
        assert out.gate_loss.dim() == 0 and float(out.gate_loss) == 0.0 and out.gate_probs is None
        assert out.merged.shape == (2, C) and out.merged.dtype == torch.bool
        assert torch.isfinite(out.last).all()
        cls = ClassificationHead(m.dim, 5).eval()
        seg = SegmentationHead(m.hidden_dim, 4, [1, 2]).eval()
        with torch.no_grad():
            assert cls(out, pts).shape == (2, 5)
            assert seg(out, pts).shape == (2, N, 4)
        json.dumps(m.init_kwargs)


def test_encode_shares_the_tokenization_and_rejects_gate_options(teacher, tok):
    for m in _all_baselines(teacher).values():
        m.eval()
        with torch.no_grad():
            out = m.encode(tok)
        assert out.tokens is tok and out.last.shape == (2, C, DIM)
        with pytest.raises(ValueError):
            m.encode(tok, fusion_threshold=0.5)


def test_from_teacher_copies_weights_and_rebuilds_from_init_kwargs(teacher, tok):
    for name, m in _all_baselines(teacher).items():
        assert m.copied_from_teacher and not any(p.requires_grad for p in m.tokenizer.parameters())
        for a, b in zip(m.encoder.state_dict().values(), teacher.encoder.state_dict().values()):
            assert torch.equal(a, b)
        twin = build_baseline(name, m.tokenizer, TransformerEncoder(dim=DIM, depth=DEPTH, heads=2),
                              **json.loads(json.dumps(m.init_kwargs)))
        twin.load_state_dict(m.state_dict())
        m.eval(), twin.eval()
        with torch.no_grad():
            kw = [{"generator": _gen(3)} if name == "random" else {} for _ in range(2)]
            assert torch.equal(m.encode(tok, **kw[0]).last, twin.encode(tok, **kw[1]).last), name


def test_gradients_flow_for_fmd(teacher, tok):
    with torch.no_grad():
        y = teacher.encoder(tok.tokens, tok.pos).last
    for name, m in _all_baselines(teacher).items():
        m.train()
        out = m.encode(tok, **({"generator": _gen()} if name == "random" else {}))
        F.smooth_l1_loss(out.last, y).backward()
        grads = [p.grad for p in m.encoder.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
        assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------ random sampling
def test_random_sampling_keeps_exactly_c_prime_tokens_and_is_seedable(teacher, tok):
    m = RandomTokenSampling.from_teacher(teacher, 8).eval()
    seen = []
    hook = m.encoder.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        a = m.encode(tok, generator=_gen(5))
        b = m.encode(tok, generator=_gen(5))
        c = m.encode(tok, generator=_gen(6))
    hook.remove()
    assert seen[0] == (2, 8, DIM)
    assert torch.equal(a.tokens_in_encoder, torch.tensor([8, 8]))
    assert torch.equal(a.info["kept_idx"], b.info["kept_idx"]) and torch.equal(a.last, b.last)
    assert not torch.equal(a.info["kept_idx"], c.info["kept_idx"])
    kept = a.info["kept_idx"]
    assert all(len(set(row.tolist())) == 8 for row in kept)
    assert int(a.merged.sum()) == 2 * (C - 8)
    # kept slots map to themselves, dropped ones to the nearest kept center; outputs are copies
    kc = torch.gather(tok.centers, 1, kept.unsqueeze(-1).expand(-1, -1, 3))
    for i in range(2):
        for j in range(C):
            seg = int(a.segments[i, j])
            assert 0 <= seg < 8
            if j in kept[i].tolist():
                assert int(kept[i, seg]) == j
            else:
                d = ((kc[i] - tok.centers[i, j]) ** 2).sum(-1)
                assert torch.isclose(d[seg], d.min())
            assert torch.equal(a.last[i, j], a.last[i, int(kept[i, seg])])
    # the kept tokens' outputs are the plain encoder on the kept tokens
    with torch.no_grad():
        sub = teacher.encoder(torch.gather(tok.tokens, 1, kept.unsqueeze(-1).expand(-1, -1, DIM)),
                              torch.gather(tok.pos, 1, kept.unsqueeze(-1).expand(-1, -1, DIM))).last
    assert torch.allclose(torch.gather(a.last, 1, kept.unsqueeze(-1).expand(-1, -1, DIM)), sub, atol=1e-6)
    # global RNG path is seedable too; a budget lowers c'
    torch.manual_seed(1)
    g1 = m.encode(tok).info["kept_idx"]
    torch.manual_seed(1)
    assert torch.equal(g1, m.encode(tok).info["kept_idx"])
    assert m.encode(tok, budget=3, generator=_gen()).info["kept_idx"].shape == (2, 3)


# ------------------------------------------------------------------------------------ fewer centers
def test_fewer_centers_uses_k_2n_over_c_prime_and_the_fps_prefix(teacher):
    m = FewerCenters.from_teacher(teacher, 4).eval()
    pts = _points()
    assert m.group_size_for(N) == 2 * N // 4 == 64
    with torch.no_grad():
        out = m(pts, generator=_gen())
    coarse = out.info["coarse_tokens"]
    assert out.info["group_size"] == 64 and coarse.group_idx.shape == (2, 4, 64)
    assert torch.equal(coarse.centers, out.tokens.centers[:, :4])
    assert torch.equal(coarse.group_idx, knn(pts, coarse.centers, 64))       # exact kNN on the cloud
    seen = []
    hook = m.encoder.register_forward_hook(lambda mod, args, o: seen.append(args[0].shape))
    with torch.no_grad():
        m(pts, generator=_gen())
    hook.remove()
    assert seen == [(2, 4, DIM)] and torch.equal(out.tokens_in_encoder, torch.tensor([4, 4]))
    # every slot holds its nearest coarse center's output; coarse centers hold their own
    d = ((out.tokens.centers.unsqueeze(2) - coarse.centers.unsqueeze(1)) ** 2).sum(-1)
    assert torch.allclose(d.gather(2, out.segments.unsqueeze(-1))[..., 0], d.min(-1).values)
    assert torch.equal(out.segments[:, :4], torch.arange(4).expand(2, -1))
    with torch.no_grad():
        enc = m.encoder(coarse.tokens, coarse.pos).last
    assert torch.allclose(out.last, torch.gather(enc, 1, out.segments.unsqueeze(-1).expand(-1, -1, DIM)))
    # the rule with other c' and the paper's numbers
    assert FewerCenters.from_teacher(teacher, 16).group_size_for(1024) == 128
    assert FewerCenters.from_teacher(teacher, 1).group_size_for(1024) == 1024


def test_fewer_centers_without_points_rebuilds_the_cloud_from_groups(teacher, tok):
    m = FewerCenters.from_teacher(teacher, 4).eval()
    pts, first = m.cloud_from_groups(tok)
    n_distinct = [len(set(r.tolist())) for r in tok.group_idx.flatten(1)]
    assert first.sum(1).tolist() == n_distinct
    with torch.no_grad():
        out = m.encode(tok)                                   # what the distillation stage calls
    k = out.info["group_size"]
    assert k == 2 * min(n_distinct) // 4
    assert out.last.shape == (2, C, DIM)
    gi = out.info["coarse_tokens"].group_idx
    for i in range(2):                                        # indices into the input cloud, no repeats
        members = set(tok.group_idx[i].flatten().tolist())
        for g in gi[i]:
            assert len(set(g.tolist())) == k and set(g.tolist()) <= members
    idw = FewerCenters.from_teacher(teacher, 4, upsample="idw").eval()
    with torch.no_grad():
        o2 = idw.encode(tok)
    assert torch.allclose(o2.cam.sum(-1), torch.ones(2, C))
    assert torch.allclose(o2.last[:, :4], out.last[:, :4], atol=1e-5)  # coarse centers keep their own output


# ------------------------------------------------------------------------------------ ToMe
def test_halving_schedule_matches_the_paper():
    assert halving_schedule(64, 16) == [32, 16]
    assert halving_schedule(64, 1) == [32, 16, 8, 4, 2, 1]
    assert halving_schedule(32, 8) == [16, 8]
    assert halving_schedule(16, 16) == []


def test_tome_tokens_per_layer_follow_the_schedule_and_sizes_sum_to_c(teacher, tok):
    for sched, expected in (([16, 8], [16, 8]), ([16], [16, 16]), ([5, 3], [27, 24]), ([16, 16], [16, 8])):
        m = ToMeBackbone.from_teacher(teacher, r_schedule=sched).eval()
        with torch.no_grad():
            out = m.encode(tok)
        trace = out.info["trace"]
        assert trace.tokens_per_layer == expected, sched   # r capped at floor(T / 2)
        assert torch.equal(out.tokens_in_encoder, torch.tensor([expected[-1]] * 2))
        for src, size, t in zip(trace.sources, trace.sizes, expected):
            assert size.shape == (2, t, 1)
            assert torch.equal(size.sum(1)[:, 0], torch.full((2,), float(C)))
            # unmerge map: every slot points at a valid token; a token's size = slots mapped to it
            assert int(src.min()) >= 0 and int(src.max()) < t
            counts = F.one_hot(src, t).sum(1).to(size.dtype)
            assert torch.equal(counts, size[..., 0])
        assert torch.equal(out.segments, trace.source)
        assert torch.equal(out.merged, torch.gather(trace.sizes[-1][..., 0], 1, trace.source) > 1)
        # slots sharing a token share its state in every layer
        for h, src in zip(out.encoded.hidden + [out.last], trace.sources + [trace.source]):
            idx = src.unsqueeze(-1).expand(-1, -1, h.shape[-1])
            per_token = torch.zeros(2, C, h.shape[-1]).scatter(1, idx, h)   # one slot's state per token
            assert torch.equal(torch.gather(per_token, 1, idx), h)
    m = ToMeBackbone.from_teacher(teacher, target_tokens=8)
    assert m.r_schedule == [16, 8]
    # a target, not a fixed schedule: clouds tokenized with twice the centers still end at 16 tokens
    m = ToMeBackbone.from_teacher(teacher, target_tokens=16).eval()
    big = m.tokenizer(_points(), num_groups=2 * C, generator=_gen())
    with torch.no_grad():
        out = m.encode(big)
    assert out.info["trace"].tokens_per_layer == [32, 16] and out.last.shape[1] == 2 * C
    rebuilt = type(m)(m.tokenizer, m.encoder, **m.init_kwargs)
    assert rebuilt.target_tokens == 16 and rebuilt.schedule(2 * C) == [32, 16] and rebuilt.schedule(C) == [16]
    with pytest.raises(ValueError, match="cannot reach 16 tokens from 256 in 2 blocks"):
        rebuilt.schedule(8 * C)


def test_tome_with_r_zero_is_exactly_the_plain_encoder(teacher, tok):
    for sched in ([], [0, 0]):
        m = ToMeBackbone.from_teacher(teacher, r_schedule=sched).eval()
        with torch.no_grad():
            out = m.encode(tok)
            ref = teacher.encoder(tok.tokens, tok.pos)
        assert torch.equal(out.last, ref.last)
        assert all(torch.equal(a, b) for a, b in zip(out.encoded.hidden, ref.hidden))
        assert torch.equal(out.segments, torch.arange(C).expand(2, -1)) and not out.merged.any()


def test_tome_size_weighted_merge_by_hand():
    # 4 tokens: A = {0, 2}, B = {1, 3}; metric makes 2 ~ 3 the closest pair, 0 closest to 1 but less
    metric = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.1, 1.0]]])
    mrg = bipartite_soft_matching(metric, 1)
    assert mrg.src_idx.flatten().tolist() == [1] and mrg.dst_idx.flatten().tolist() == [1]
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    size = torch.tensor([[[1.0], [2.0], [3.0], [1.0]]])
    y, s = merge_wavg(mrg, x, size)
    # [token 0 (unmerged A), token 1 (B), (3 * token 2 + 1 * token 3) / 4 (B)]
    assert torch.equal(y, torch.tensor([[[1.0, 2.0], [3.0, 4.0], [(15 + 7) / 4, (18 + 8) / 4]]]))
    assert torch.equal(s, torch.tensor([[[1.0], [2.0], [4.0]]]))
    assert mrg.new_index().tolist() == [[0, 1, 2, 2]]
    # odd T: the last A token can only be merged or kept; r is capped at floor(T / 2)
    mrg5 = bipartite_soft_matching(torch.randn(1, 5, 3, generator=_gen()), 9)
    assert mrg5.r == 2 and mrg5.t_out == 3 and mrg5.new_index().max() < 3
    assert bipartite_soft_matching(metric, 0) is None


def test_tome_proportional_attention_bias_is_log_size(teacher, monkeypatch):
    size = torch.tensor([[[1.0], [2.0], [4.0]]])
    bias = proportional_bias(size)
    assert bias.shape == (1, 1, 1, 3)
    assert torch.allclose(bias.flatten(), torch.log(torch.tensor([1.0, 2.0, 4.0])))
    # a key of size 2 attends like two identical keys
    blk = teacher.encoder.blocks[0]
    x = torch.randn(1, 3, DIM, generator=_gen(2))
    dup = torch.cat([x, x[:, 1:2]], dim=1)                              # token 1 twice
    with torch.no_grad():
        merged, _ = tome_attention(blk, x, torch.tensor([[[1.0], [2.0], [1.0]]]))
        full, _ = tome_attention(blk, dup)
        plain = blk.attn(x)
        ones, metric = tome_attention(blk, x, torch.ones(1, 3, 1))
    assert torch.allclose(merged, full[:, :3], atol=1e-6)
    assert torch.allclose(plain, ones, atol=1e-6) and metric.shape == (1, 3, DIM // 2)
    # inside the encoder the second block sees the bias of the first block's merge
    m = ToMeBackbone.from_teacher(teacher, r_schedule=[16]).eval()
    seen = {}
    import foundry_core.models.baselines.tome as tome_mod

    def spy(s):
        seen["size"], seen["bias"] = s, proportional_bias(s)
        return seen["bias"]
    monkeypatch.setattr(tome_mod, "proportional_bias", spy)
    with torch.no_grad():
        out = m(_points(), generator=_gen())
    assert torch.equal(seen["size"], out.info["trace"].sizes[0])
    assert torch.equal(seen["bias"], seen["size"].log()[:, None, None, :, 0])


def test_tome_encoder_reuses_the_encoder_parameters(teacher, tok):
    enc = ToMeEncoder(teacher.encoder, r_schedule=[16, 8])
    assert {id(p) for p in enc.parameters()} == {id(p) for p in teacher.encoder.parameters()}
    m = ToMeBackbone.from_teacher(teacher, r_schedule=[16, 8]).eval()
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in teacher.parameters())
    with torch.no_grad():
        out, trace = enc(tok.tokens, tok.pos)
        ref = m.encode(tok)
    assert torch.equal(out.last, ref.last) and trace.tokens_per_layer == [16, 8]


# ------------------------------------------------------------------------------------ K-Means
def test_kmeans_prototypes_fit_assign_and_round_trip(teacher, tok):
    m = KMeansPrototypes.from_teacher(teacher, 4).eval()
    with pytest.raises(RuntimeError):
        m.encode(tok)
    data = _points(b=4, seed=1)
    m.fit(teacher.tokenizer, data, batch_size=2)
    assert bool(m.fitted) and m.prototypes.shape == (4, DIM) and m.prototypes.abs().sum() > 0
    again = KMeansPrototypes.from_teacher(teacher, 4).fit(None, data, batch_size=2)
    assert torch.equal(again.prototypes, m.prototypes)                      # seeded
    other = KMeansPrototypes.from_teacher(teacher, 4, seed=1).fit(None, data, batch_size=2)
    assert not torch.equal(other.prototypes, m.prototypes)
    # the prototypes are KMeans centroids of the tokens: each is the mean of its cluster
    x = torch.as_tensor(m.collect_tokens(data, batch_size=2, generator=_gen(m.seed)), dtype=torch.float32)
    lab = m.assign(x.unsqueeze(0))[0]
    for j in range(4):
        assert torch.allclose(x[lab == j].mean(0), m.prototypes[j], atol=1e-4)
    with torch.no_grad():
        out = m.encode(tok)
    d = ((tok.tokens.unsqueeze(2) - m.prototypes.view(1, 1, 4, DIM)) ** 2).sum(-1)
    assert torch.equal(out.segments, d.argmin(-1))
    assert int(out.segments.min()) >= 0 and int(out.segments.max()) < 4
    assert torch.equal(out.tokens_in_encoder, torch.tensor([4, 4]))
    # slots: grouped means (prototype when empty), broadcast back through the assignment
    cam = F.one_hot(out.segments, 4).float()
    counts = cam.sum(1)
    mean = cam.transpose(1, 2) @ tok.tokens / counts.clamp_min(1).unsqueeze(-1)
    slots = torch.where((counts > 0).unsqueeze(-1), mean, m.prototypes.expand(2, -1, -1))
    pos = cam.transpose(1, 2) @ tok.pos / counts.clamp_min(1).unsqueeze(-1)
    with torch.no_grad():
        enc = teacher.encoder(slots, pos)
    assert torch.allclose(out.last, cam @ enc.last, atol=1e-6)
    # state_dict round trip carries the prototypes and the fitted flag
    fresh = KMeansPrototypes(m.tokenizer, TransformerEncoder(dim=DIM, depth=DEPTH, heads=2), **m.init_kwargs).eval()
    assert not bool(fresh.fitted)
    fresh.load_state_dict(m.state_dict())
    assert bool(fresh.fitted) and torch.equal(fresh.prototypes, m.prototypes)
    with torch.no_grad():
        assert torch.equal(fresh.encode(tok).last, out.last)
