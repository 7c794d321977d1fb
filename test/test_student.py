"""Foundry student: DSO (SuperTokens + CAM), CAU, token gate with budget, FoundryStudent end to end."""
import itertools

import pytest
import torch
from torch import nn

from foundry_core.models.backbone import PointBackbone
from foundry_core.models.cau import CAU
from foundry_core.models.dso import DSO
from foundry_core.models.gate import TokenGate, forced_merges, merge_mask
from foundry_core.models.heads import ClassificationHead, SegmentationHead
from foundry_core.models.student import FoundryStudent

from support.configs import tiny_model

DIM, DEPTH, C, N = 32, 2, 16, 64


pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(**kw):
    return tiny_model(**{"dim": DIM, "depth": DEPTH, "num_groups": C, **kw})


def _points(b=2, n=N, seed=0):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _teacher(**kw):
    torch.manual_seed(0)
    return PointBackbone(_cfg(**kw))


def _identity(linear: nn.Linear):
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.weight.shape[0], linear.weight.shape[1]))
        if linear.bias is not None:
            linear.bias.zero_()


# ----------------------------------------------------------------------------------------- DSO
def _assert_one_hot(cam):
    assert bool(((cam == 0) | (cam == 1)).all())
    assert torch.equal(cam.sum(-1), torch.ones_like(cam[..., 0]))


def test_cam_rows_one_hot_in_training_and_eval():
    torch.manual_seed(0)
    dso = DSO(DIM, 4)
    t, p = torch.randn(3, C, DIM), torch.randn(3, C, DIM)
    for mode in (True, False):
        dso.train(mode)
        out = dso(t, p)
        _assert_one_hot(out.cam)
        assert out.cam.shape == (3, C, 4) and out.supertokens.shape == (3, 4, DIM) and out.pos.shape == (3, 4, DIM)
        assert torch.equal(out.assignment, out.cam.argmax(-1)) and out.assignment.dtype == torch.int64
        assert torch.equal(out.counts.sum(-1), torch.full((3,), float(C)))


def _hand_dso(s=2):
    dso = DSO(4, s).eval()
    for lin in (dso.q, dso.k, dso.v):
        _identity(lin)
    with torch.no_grad():
        dso.supertokens.copy_(torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [-1, -1, -1, -1]][:s]))
    tokens = torch.tensor([[[2., 0, 0, 0],    # -> 0
                            [0, 3, 0, 0],     # -> 1
                            [4, 1, 0, 0],     # -> 0
                            [1, 5, 2, 0],     # -> 1
                            [3, 0, 1, 1]]])   # -> 0
    pos = torch.arange(20, dtype=torch.float32).view(1, 5, 4)
    return dso, tokens, pos


def test_grouped_mean_matches_hand_computation():
    dso, tokens, pos = _hand_dso()
    out = dso(tokens, pos)
    assert out.assignment.tolist() == [[0, 1, 0, 1, 0]]
    assert out.counts.tolist() == [[3.0, 2.0]]
    expected = torch.tensor([[[9 / 3, 1 / 3, 1 / 3, 1 / 3],       # (t0 + t2 + t4) / 3
                              [1 / 2, 8 / 2, 2 / 2, 0.0]]])       # (t1 + t3) / 2
    assert torch.allclose(out.supertokens, expected)
    p = pos[0]
    assert torch.allclose(out.pos[0, 0], (p[0] + p[2] + p[4]) / 3) and torch.allclose(out.pos[0, 1], (p[1] + p[3]) / 2)


def test_empty_supertoken_is_its_value_projection():
    dso, tokens, pos = _hand_dso(s=3)                   # the third SuperToken points away from all tokens
    with torch.no_grad():
        dso.v.weight.copy_(torch.randn(4, 4, generator=_gen(1)))
    out = dso(tokens, pos)
    assert out.counts[0, 2] == 0 and bool(torch.isfinite(out.supertokens).all())
    assert torch.allclose(out.supertokens[0, 2], dso.v(dso.supertokens[2]))
    assert torch.equal(out.pos[0, 2], torch.zeros(4))
    # nothing merged at all (gate keeps every token out): every SuperToken is empty, still finite
    out = dso(tokens, pos, keep=torch.zeros(1, 5, dtype=torch.bool))
    assert torch.equal(out.cam, torch.zeros_like(out.cam)) and out.assignment.tolist() == [[-1] * 5]
    assert torch.allclose(out.supertokens[0], dso.v(dso.supertokens)) and torch.equal(out.pos, torch.zeros_like(out.pos))


def test_keep_mask_zeroes_cam_rows():
    dso, tokens, pos = _hand_dso()
    keep = torch.tensor([[True, True, False, True, True]])
    out = dso(tokens, pos, keep=keep)
    assert out.assignment.tolist() == [[0, 1, -1, 1, 0]] and torch.equal(out.cam[0, 2], torch.zeros(2))
    assert torch.allclose(out.supertokens[0, 0], (tokens[0, 0] + tokens[0, 4]) / 2)


def test_gradients_reach_supertokens_and_query_key_through_gumbel():
    torch.manual_seed(0)
    dso, cau = DSO(DIM, 4).train(), CAU(DIM, DIM)
    t, p = torch.randn(2, C, DIM), torch.randn(2, C, DIM)
    out = dso(t, p)
    assert bool((out.counts > 0).all())                 # no empty SuperToken: only the CAM path remains
    y = cau(t, out.cam, out.supertokens + out.pos)
    (y * torch.randn_like(y)).sum().backward()
    for param in (dso.supertokens, dso.q.weight, dso.k.weight, dso.v.weight):
        assert param.grad is not None and float(param.grad.abs().sum()) > 0


def test_soft_assignment_ablation_and_eval_determinism():
    torch.manual_seed(0)
    t, p = torch.randn(2, C, DIM), torch.randn(2, C, DIM)
    soft = DSO(DIM, 4, hard=False)
    out = soft(t, p)
    assert torch.allclose(out.cam.sum(-1), torch.ones(2, C)) and bool((out.cam < 1).all())
    assert torch.allclose(out.supertokens, out.cam.transpose(1, 2) @ soft.v(t) / out.counts.unsqueeze(-1), atol=1e-6)
    hard = DSO(DIM, 4).eval()
    a, b = hard(t, p), hard(t, p)
    assert torch.equal(a.cam, b.cam) and torch.equal(a.supertokens, b.supertokens)


# ----------------------------------------------------------------------------------------- CAU
def test_cau_shapes_and_residual_path():
    torch.manual_seed(0)
    t, cam = torch.randn(2, C, DIM), torch.eye(4)[torch.randint(0, 4, (2, C))]
    s_out = torch.randn(2, 4, DIM)
    cau = CAU(DIM, 48, out_norm=True)
    assert cau(t, cam, s_out).shape == (2, C, 48)
    cau = CAU(DIM, DIM)
    # a zero SuperToken path leaves exactly MLP(T): the residual carries the tokens
    assert torch.allclose(cau(t, cam, torch.zeros_like(s_out)), cau.mlp(t))
    cau.mlp = nn.Identity()                              # the MLP input is exactly T + CAM . S_out
    assert torch.allclose(cau(t, cam, s_out), t + cam @ s_out)
    mask = torch.zeros(2, C, dtype=torch.bool)
    mask[:, :3] = True
    byp = torch.randn(2, C, DIM)
    out = cau(t, cam * (~mask).unsqueeze(-1), s_out, bypass_out=byp, bypass_mask=mask)
    assert torch.allclose(out[:, :3], t[:, :3] + byp[:, :3]) and torch.allclose(out[:, 3:], (t + cam @ s_out)[:, 3:])


def test_cau_skip_starts_at_the_routed_supertoken_output_and_still_learns():
    torch.manual_seed(0)
    t, cam = torch.randn(2, C, DIM), torch.eye(4)[torch.randint(0, 4, (2, C))]
    s_out = torch.randn(2, 4, DIM, requires_grad=True)
    cau = CAU(DIM, DIM, skip=True)
    out = cau(t, cam, s_out)
    assert torch.allclose(out, cam @ s_out)              # zero-initialised MLP: exactly CAM . S_out
    out.square().sum().backward()
    assert cau.mlp[-1].weight.grad.abs().sum() > 0       # the MLP correction receives gradient
    wide = CAU(DIM, 48, skip=True)                       # other width: a learned projection of CAM . S_out
    assert isinstance(wide.skip, nn.Linear) and wide(t, cam, s_out).shape == (2, C, 48)
    assert CAU(DIM, DIM).skip is None                    # the paper's form by default


# ----------------------------------------------------------------------------------------- gate
def test_gate_budget_and_threshold_rules_on_random_probs():
    g = torch.Generator().manual_seed(0)
    s = 4
    for trial, (b, c) in enumerate(itertools.product([1, 3, 5], [8, 16, 20])):
        probs = torch.rand(b, c, generator=g)
        probs[:, :2] = probs[:, 2:3]                     # ties
        for budget in [None, s, s + 1, c // 2, c - 1, c, c + 3]:
            prev = None
            for r in [None, 0.0, 0.2, 0.5, 0.8, 1.0]:
                m = merge_mask(probs, s, budget, r)
                assert m.shape == (b, c) and m.dtype == torch.bool
                if budget is not None:
                    forced = forced_merges(c, s, budget)
                    merged = m.sum(1)
                    assert bool((merged >= forced).all())
                    # worst case tokens in the encoder: non-empty SuperTokens <= min(s, merged)
                    worst = torch.minimum(merged, torch.tensor(s)) + (c - merged)
                    assert bool((worst <= budget).all()), (budget, r)
                    if r is None:
                        assert bool((merged == forced).all())
                        # the forced ones are the most probable
                        assert bool((probs.masked_fill(~m, 2).min(1).values >= probs.masked_fill(m, -1).max(1).values).all())
                if r is not None and prev is not None:
                    assert bool((m <= prev).all())      # higher r -> subset of the merged tokens
                if r is not None:
                    prev = m
    with pytest.raises(ValueError, match="budget"):
        merge_mask(torch.rand(2, 8), 4, budget=3)
    assert not bool(merge_mask(torch.rand(2, 8), 4, budget=8).any())


def test_gate_module_straight_through_and_regulariser():
    torch.manual_seed(0)
    gate = TokenGate(DIM, reg_weight=0.1).train()
    t = torch.randn(2, C, DIM)
    out = gate(t, num_supertokens=4)
    assert out.probs.shape == (2, C) and torch.equal(out.selection, out.merge.float())
    assert torch.equal(out.merge, out.probs > 0.5)
    assert torch.allclose(out.loss, -0.1 * out.probs.sum(1).mean())
    (out.selection * torch.randn(2, C)).sum().backward()
    assert float(gate.fc1.weight.grad.abs().sum()) > 0 and float(gate.fc2.weight.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------------------- student
def _student(s=4, gate=False, **kw):
    teacher = _teacher()
    torch.manual_seed(1)
    return FoundryStudent.from_teacher(teacher, s, gate=gate, **kw), teacher


def test_student_output_is_backbone_compatible():
    student, _ = _student(s=4)
    student.eval()
    pts = _points()
    out = student(pts, generator=_gen())
    assert out.last.shape == (2, C, DIM) and out.encoded.last is out.last
    assert len(out.encoded.hidden) == DEPTH and all(h.shape == (2, C, DIM) for h in out.encoded.hidden)
    assert out.cam.shape == (2, C, 4) and out.segments.shape == (2, C) and int(out.segments.max()) < 4
    assert out.tokens_in_encoder.shape == (2,) and bool((out.tokens_in_encoder <= 4).all())
    assert out.gate_probs is None and float(out.gate_loss) == 0.0
    again = student(pts, generator=_gen())
    assert torch.equal(out.last, again.last)             # eval is deterministic
    torch.manual_seed(0)
    cls = ClassificationHead(student.dim, num_classes=5).eval()
    seg = SegmentationHead(student.hidden_dim, num_classes=4, layers=[1, 2], num_categories=3).eval()
    for o in (out, _student(s=4, gate=True)[0].eval()(pts, generator=_gen(), budget=10)):
        assert cls(o, pts).shape == (2, 5)
        logits = seg(o, pts, torch.tensor([0, 2]))
        assert logits.shape == (2, N, 4) and bool(torch.isfinite(logits).all())


def test_identity_assignment_reproduces_encoder_on_tokens():
    """s = c, W_V = W_Q = I, SuperTokens e_i and W_K solved so token j picks SuperToken perm[j]:
    each SuperToken is one token, so the encoder states mapped back by the CAM equal the encoder
    run on the tokens themselves."""
    c = 8
    teacher = _teacher(num_groups=c)
    torch.manual_seed(1)
    student = FoundryStudent.from_teacher(teacher, c).eval()
    pts = _points()
    with torch.no_grad():
        tok = student.tokenizer(pts, generator=_gen())
        perm = torch.randperm(c, generator=_gen(3))
        target = 10.0 * torch.eye(c, DIM)[perm]                    # K_j = 10 e_perm[j]
        tt = tok.tokens.reshape(-1, DIM)                            # (2c, d), rank 2c <= d
        w_k = torch.linalg.lstsq(tt, target.repeat(2, 1)).solution  # tt @ w_k = K
        student.dso.k.weight.copy_(w_k.t())
        _identity(student.dso.q)
        _identity(student.dso.v)
        student.dso.supertokens.copy_(torch.eye(c, DIM))
        out = student(pts, generator=_gen())
        ref = student.encoder(tok.tokens, tok.pos)
    assert out.segments.tolist() == [perm.tolist()] * 2
    assert int(out.tokens_in_encoder.min()) == c
    for h, r in zip(out.encoded.hidden, ref.hidden):
        assert torch.allclose(h, r, atol=1e-4)
    assert torch.allclose(out.cam @ out.supertokens_out, ref.last, atol=1e-4)


def test_gated_student_without_merges_is_the_plain_encoder():
    student, teacher = _student(s=4, gate=True)
    student.eval(), teacher.eval()
    pts = _points()
    with torch.no_grad():
        out = student(pts, generator=_gen(), budget=C)     # budget c, no threshold: nothing forced
        ref = teacher(pts, generator=_gen())
    assert not bool(out.merged.any()) and out.tokens_in_encoder.tolist() == [C, C]
    assert out.segments.tolist() == [list(range(4, 4 + C))] * 2
    for h, r in zip(out.encoded.hidden, ref.encoded.hidden):   # same weights copied from the teacher
        assert torch.allclose(h, r, atol=1e-5)


def test_gated_student_respects_budget_for_random_gates():
    student, _ = _student(s=4, gate=True)
    student.eval()
    pts = _points(b=3)
    with torch.no_grad():
        tok = student.tokenizer(pts, generator=_gen())
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        probs = torch.rand(3, C, generator=g)
        student.gate.probs = lambda t, probs=probs: probs
        for budget, r in itertools.product([4, 5, 9, 15, 16, 30], [None, 0.1, 0.5, 0.9]):
            out = student.encode(tok, budget=budget, fusion_threshold=r)
            assert bool((out.tokens_in_encoder <= budget).all()) and out.encoder_keep.shape[1] <= budget
            assert torch.equal(out.tokens_in_encoder, out.encoder_keep.sum(1))
            real = (out.counts > 0).sum(1) + (~out.merged).sum(1)
            assert torch.equal(out.tokens_in_encoder, real)
            assert bool(torch.isfinite(out.last).all())
            # every token has a segment: SuperTokens < s, bypass tokens s, s+1, ...
            seg = out.segments
            assert bool(((seg < 4) == out.merged).all()) and int(seg.min()) >= 0
        m_lo = student.encode(tok, fusion_threshold=0.3).merged
        m_hi = student.encode(tok, fusion_threshold=0.7).merged
        assert bool((m_hi <= m_lo).all())
    with pytest.raises(ValueError, match="budget"):
        student.encode(tok, budget=3)


def test_latency_falls_with_the_budget():
    student, _ = _student(s=4, gate=True)
    student.eval()
    pts = _points()
    lengths, counts = [], []
    with torch.no_grad():
        for budget in [C, 12, 8, 4]:
            out = student(pts, generator=_gen(), budget=budget)
            lengths.append(out.encoder_keep.shape[1])
            counts.append(int(out.tokens_in_encoder.max()))
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] == 4 < lengths[0]
    assert counts == sorted(counts, reverse=True) and counts[-1] <= 4 < counts[0]


def test_straight_through_gradient_reaches_the_gate():
    student, _ = _student(s=4, gate=True)
    student.train()
    torch.manual_seed(0)
    out = student(_points(), generator=_gen())
    assert out.gate_probs.shape == (2, C) and out.gate_loss.shape == ()
    assert 0 < int(out.merged.sum()) < 2 * C
    (out.last * torch.randn_like(out.last)).sum().backward()      # distillation-like loss only
    for param in (student.gate.fc1.weight, student.gate.fc2.weight, student.dso.supertokens, student.dso.q.weight):
        assert param.grad is not None and float(param.grad.abs().sum()) > 0


def test_from_teacher_copies_and_freezes():
    student, teacher = _student(s=2)
    t_sd, s_sd = teacher.encoder.state_dict(), student.encoder.state_dict()
    assert all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd) and len(student.copied_from_teacher) == len(t_sd)
    assert not any(p.requires_grad for p in student.tokenizer.parameters())
    student.train()
    assert not student.tokenizer.training and student.encoder.training
    student.freeze_encoder()
    student.train()
    assert not student.encoder.training and not any(p.requires_grad for p in student.encoder.parameters())
    assert all(p.requires_grad for p in student.dso.parameters())
    # shallower student: only the first block (and the final norm) come from the teacher
    torch.manual_seed(1)
    small = FoundryStudent.from_teacher(teacher, 2, student_cfg=_cfg(depth=1), freeze_tokenizer=False)
    assert torch.equal(small.encoder.blocks[0].attn.qkv.weight, teacher.encoder.blocks[0].attn.qkv.weight)
    assert all(k.startswith(("blocks.0.", "norm.")) for k in small.copied_from_teacher)
    assert any(p.requires_grad for p in small.tokenizer.parameters())
    # narrower student: tokens are projected to its width, Y_hat keeps the teacher width
    narrow = FoundryStudent.from_teacher(teacher, 2, student_cfg=_cfg(dim=16))
    out = narrow.eval()(_points(), generator=_gen())
    assert out.last.shape == (2, C, DIM) and out.encoded.hidden[0].shape == (2, C, 16)
    assert narrow.copied_from_teacher == []


def test_cosine_dso_ignores_what_all_tokens_share_and_spreads_assignments():
    torch.manual_seed(0)
    dso = DSO(32, 8, similarity="cosine").eval()
    tokens = torch.randn(2, 64, 32)
    shifted = tokens + 50.0 * torch.randn(1, 1, 32)        # a large component every token shares
    assert torch.allclose(dso.logits(tokens), dso.logits(shifted), atol=1e-4)
    used = dso(shifted, torch.zeros_like(shifted)).counts.gt(0).sum(-1)
    assert int(used.min()) >= 4                              # not one SuperToken for everything
    dso.train()
    out = dso(tokens, torch.zeros_like(tokens))
    out.supertokens.sum().backward()
    assert dso.logit_scale.grad is not None and dso.supertokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="similarity"):
        DSO(32, 8, similarity="euclid")
