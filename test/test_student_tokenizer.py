"""The student tokenizer of its own (models/compact_pointnet.py): the same function on its folded
inference path, ONNX export parity, checkpoint round trips, configuration, and distillation with the
token-level loss (and the tokenizer-only initialisation)."""
from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from foundry_core.configs import DistillConfig, StudentTokenizerConfig
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.compact_pointnet import CompactPointNet, batchnorm_folding, scale_free_groups
from foundry_core.models.encoder import MappedLayers
from foundry_core.models.io import load_backbone, load_task_model, save_student
from foundry_core.models.student import FoundryStudent
from foundry_core.models.tokenizer import MiniPointNet
from foundry_core.runtime.export import ExportGraph, example_inputs, export_onnx, to_numpy
from foundry_core.stages.distill import Distiller, run_distill
from foundry_core.typed_yaml import ConfigError, load_config

from support.configs import tiny_data, tiny_distill, tiny_model
from support.exports import export_task_model

COMPACT = {"kind": "compact", "widths": [8, 16, 24], "group_points": None}
SCALE_FREE = {**COMPACT, "scale_free": True}

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise_batchnorms(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters (negative scales included), so that
    folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _student(s: int = 4, pointnet: dict | None = COMPACT, **kw) -> FoundryStudent:
    torch.manual_seed(0)
    teacher = PointBackbone(tiny_model())
    return FoundryStudent.from_teacher(teacher, s, tokenizer_pointnet=pointnet, **kw)


@pytest.mark.parametrize("make", [lambda: MiniPointNet(3, 32), lambda: CompactPointNet(3, 32, (8, 16, 24)),
                                  lambda: CompactPointNet(3, 32, (8, 16, 24), group_points=5),
                                  lambda: CompactPointNet(3, 32, (8, 16, 24), scale_free=True)],
                         ids=["teacher", "compact", "compact_k5", "compact_scale_free"])
def test_folded_inference_path_is_the_same_function(make):
    torch.manual_seed(0)
    net = make()
    _randomise_batchnorms(net)
    net.eval()
    groups = torch.randn(3, 7, 8, 3) * 0.2
    with torch.no_grad():
        folded = net(groups)
        with batchnorm_folding(False):
            plain = net(groups)
    assert folded.shape == (3, 7, 32)
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    assert not torch.equal(folded, torch.zeros_like(folded))


def test_compact_reads_only_the_nearest_group_points():
    torch.manual_seed(0)
    net = CompactPointNet(3, 16, (8, 8, 8), group_points=4).eval()
    groups = torch.randn(2, 5, 8, 3)
    far = groups.clone()
    far[:, :, 4:] += 100.0            # the points after the 4 nearest do not matter
    with torch.no_grad():
        torch.testing.assert_close(net(groups), net(far))
        assert not torch.allclose(net(groups), net(groups.flip(2)))


def test_scale_free_groups_differ_only_in_the_log_radius_channel():
    """A group and the same group 3x smaller (a denser cloud) give the same unit-radius offsets; the
    tokenizer still tells them apart through log r."""
    torch.manual_seed(0)
    groups = torch.randn(2, 5, 8, 3) * 0.1
    a, b = scale_free_groups(groups), scale_free_groups(groups / 3)
    assert a.shape == (2, 5, 8, 4)
    torch.testing.assert_close(a[..., :3], b[..., :3])
    torch.testing.assert_close(a[..., 3] - b[..., 3], torch.full((2, 5, 8), math.log(3.0)))
    assert float(torch.linalg.vector_norm(a[..., :3], dim=-1).amax()) == pytest.approx(1.0)
    net = CompactPointNet(3, 16, (8, 8, 8), scale_free=True).eval()
    with torch.no_grad():
        assert not torch.allclose(net(groups), net(groups / 3))
    assert net.spec()["scale_free"] is True and "scale_free" not in CompactPointNet(3, 16).spec()


def test_student_tokenizer_is_its_own_and_trainable_with_the_teachers_grouping_and_positions():
    torch.manual_seed(0)
    teacher = PointBackbone(tiny_model())
    st = FoundryStudent.from_teacher(teacher, 4, tokenizer_pointnet=COMPACT)
    tt = FoundryStudent.from_teacher(teacher, 4)
    assert isinstance(st.tokenizer.encoder, CompactPointNet) and isinstance(tt.tokenizer.encoder, MiniPointNet)
    assert not st.tokenizer_frozen and all(p.requires_grad for p in st.tokenizer.encoder.parameters())
    assert tt.tokenizer_is_teachers and not st.tokenizer_is_teachers
    assert (st.tokenizer.num_groups, st.tokenizer.group_size) == (teacher.tokenizer.num_groups,
                                                                 teacher.tokenizer.group_size)
    for name, v in teacher.tokenizer.pos_embed.state_dict().items():
        assert torch.equal(st.tokenizer.pos_embed.state_dict()[name], v)
    n_compact = sum(p.numel() for p in st.tokenizer.encoder.parameters())
    assert n_compact < sum(p.numel() for p in teacher.tokenizer.encoder.parameters()) / 10


def test_checkpoint_round_trip_keeps_the_student_tokenizer(tmp_path):
    st = _student(gate=True)
    _randomise_batchnorms(st.tokenizer)
    st.eval()
    path = save_student(tmp_path / "student.safetensors", st)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["tokenizer"]["pointnet"] == COMPACT
    back = load_backbone(path).eval()
    assert isinstance(back.tokenizer.encoder, CompactPointNet) and back.tokenizer.pointnet_spec == COMPACT
    assert back.state_dict().keys() == st.state_dict().keys()
    for k, v in st.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    pts = torch.randn(2, 128, 3)
    with torch.no_grad():
        a = st(pts, torch.Generator().manual_seed(1), budget=6)
        b = back(pts, torch.Generator().manual_seed(1), budget=6)
    torch.testing.assert_close(a.last, b.last)
    torch.testing.assert_close(a.tokens.tokens, b.tokens.tokens)


def test_task_model_checkpoint_round_trip_with_the_student_tokenizer(tmp_path):
    model, meta = load_task_model(export_task_model(tmp_path, tokenizer_pointnet=COMPACT))
    assert isinstance(model.backbone.tokenizer.encoder, CompactPointNet)
    assert meta["tokenizer"]["pointnet"] == COMPACT
    model, meta = load_task_model(export_task_model(tmp_path / "sf", tokenizer_pointnet=SCALE_FREE))
    assert model.backbone.tokenizer.encoder.scale_free and meta["tokenizer"]["pointnet"] == SCALE_FREE


@pytest.fixture(scope="module", params=[("sceneseg", True, COMPACT), ("cls", False, COMPACT),
                                        ("cls", False, SCALE_FREE)], ids=["sceneseg-gated", "cls", "cls-scale-free"])
def exported_compact(request, tmp_path_factory):
    task, gate, pointnet = request.param
    d = tmp_path_factory.mktemp(f"compact_{task}")
    model, _ = load_task_model(export_task_model(d, task=task, tokenizer_pointnet=pointnet, gate=gate))
    _randomise_batchnorms(model.backbone.tokenizer, seed=3)
    model.eval()
    return model, export_onnx(model, d / "model.onnx")


def test_student_tokenizer_export_parity_onnxruntime_vs_torch(exported_compact):
    model, path = exported_compact
    graph = ExportGraph(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, c, budget, m in [(1, 16, 16, 100), (3, 24, 7, 50), (2, 40, 30, 77)]:
        ex = example_inputs(model, batch=b, num_centers=c, budget=budget, num_points=m, seed=b * c)
        with torch.no_grad():
            ref = graph(*ex)
            tokens = model.backbone.tokenizer.encoder(ex[0])
        out = sess.run(None, to_numpy(ex, graph.sig.input_names))
        for name, o, t in zip(["logits", "embeddings", "segments", "tokens_in_encoder"], out, ref):
            assert o.shape == tuple(t.shape), (name, b, c)
            err = float(np.abs(o.astype(np.float64) - t.numpy().astype(np.float64)).max())
            assert err <= 1e-4, (name, b, c, err)
        assert float(tokens.abs().max()) > 1e-3       # the tokenizer output is not trivially zero


def test_student_tokenizer_config_is_typed_and_checked():
    cfg = load_config(DistillConfig, None, ["student.tokenizer.kind=compact", "student.tokenizer.widths=[16,32,64]",
                                            "student.tokenizer.group_points=16"])
    assert cfg.student.tokenizer.pointnet == {"kind": "compact", "widths": [16, 32, 64], "group_points": 16}
    assert DistillConfig().student.tokenizer.pointnet is None            # default: the teacher's
    with pytest.raises(ConfigError, match="widths"):
        StudentTokenizerConfig(kind="compact", widths=[16, 32])
    with pytest.raises(ConfigError):
        load_config(DistillConfig, None, ["student.tokenizer.kind=pointnet2"])


def test_distiller_adds_the_token_loss_and_trains_the_tokenizer():
    torch.manual_seed(0)
    teacher = PointBackbone(tiny_model()).eval()
    st = FoundryStudent.from_teacher(teacher, 4, tokenizer_pointnet=COMPACT)
    plain = Distiller(teacher, st, token_loss_weight=0.0)
    weighted = Distiller(teacher, st, token_loss_weight=2.0)
    pts = torch.randn(2, 128, 3)
    torch.manual_seed(1)
    loss0, rec0, _ = plain(pts)
    torch.manual_seed(1)
    loss2, rec2, out = weighted(pts)
    torch.testing.assert_close(rec0, rec2)
    tok_loss = weighted.last_token_loss
    with torch.no_grad():   # the teacher's tokens on the same groups
        want = torch.nn.functional.smooth_l1_loss(out.tokens.tokens, teacher.tokenizer.encoder(out.tokens.groups))
    torch.testing.assert_close(tok_loss, want)
    torch.testing.assert_close(loss2, loss0 + 2.0 * tok_loss)
    loss2.backward()
    assert st.tokenizer.encoder.fc1.weight.grad is not None and st.tokenizer.encoder.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    # a teacher-tokenizer student has no token loss (its tokens are the teacher's)
    assert Distiller(teacher, FoundryStudent.from_teacher(teacher, 4), token_loss_weight=2.0).token_loss_weight == 0.0


def test_distillation_with_the_student_tokenizer_exports_it(tmp_path, tiny_teacher):
    cfg = tiny_distill(tmp_path, tiny_teacher, epochs=2)
    cfg.student.tokenizer = StudentTokenizerConfig(kind="compact", widths=[8, 16, 24], init_epochs=2)
    res = run_distill(cfg)
    init = json.loads((tmp_path / "tokenizer_init.json").read_text())
    assert len(init) == 2 and init[-1]["token_loss"] < init[0]["token_loss"]     # the tokenizer alone learns
    assert all("train_token_loss" in h for h in res["history"])
    student = load_backbone(res["student"]).eval()
    assert isinstance(student.tokenizer.encoder, CompactPointNet)
    assert student(torch.randn(2, 128, 3)).last.shape == (2, 16, 32)


def test_students_map_only_the_hidden_layers_a_head_reads():
    st = _student(pointnet=None).eval()
    with torch.no_grad():
        out = st(torch.randn(2, 128, 3), torch.Generator().manual_seed(0))
        assert isinstance(out.encoded.hidden, MappedLayers) and len(out.encoded.hidden) == st.depth
        assert out.encoded.hidden.done == {}
        last = out.encoded.hidden[-1]
        assert list(out.encoded.hidden.done) == [st.depth - 1]
        assert out.encoded.hidden[st.depth - 1] is last
        raw = st.encoder(*(lambda d: (d.supertokens, d.pos, d.counts > 0))(st.dso(out.tokens.tokens, out.tokens.pos)))
        torch.testing.assert_close(last, torch.matmul(out.cam, raw.hidden[-1]))


def test_the_cau_runs_only_when_the_output_tokens_are_read(tmp_path):
    from foundry_core.runtime.predictor import Predictor
    from support.exports import cloud, scene_pre
    path = export_task_model(tmp_path, tokenizer_pointnet=COMPACT)
    calls = []
    preds = {e: Predictor.from_checkpoint(path, preprocess=scene_pre(), backend="torch", embeddings=e)
             for e in (True, False)}
    for e, p in preds.items():
        p.backbone.cau.register_forward_hook(lambda *a, e=e: calls.append(e))
    a, b = preds[True](cloud(900, seed=2), budget=8), preds[False](cloud(900, seed=2), budget=8)
    assert calls == [True]                                       # no CAU for labels alone
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.embeddings.shape[0] == len(a.centers) and b.embeddings.shape == (0, a.embeddings.shape[1])
    st = _student(pointnet=None).eval()
    with torch.no_grad():
        out = st(torch.randn(2, 128, 3), torch.Generator().manual_seed(0))
    last = out.last                                              # read outside no_grad: computed as inside it
    assert not last.requires_grad
    torch.testing.assert_close(last, st.cau(out.tokens.tokens, out.cam, out.supertokens_out).detach())


def test_distill_tables_retokenizes_for_a_student_tokenizer_of_its_own():
    from foundry_core.stages.distill_tables import _same_tokenizer
    st, tt = _student(), _student(pointnet=None)
    assert _same_tokenizer(tt.tokenizer, tt.tokenizer.state_dict())
    assert not _same_tokenizer(st.tokenizer, tt.tokenizer.state_dict())      # other tensors: no KeyError


def test_group_scale_scales_only_xyz_per_group_within_the_range():
    from foundry_core.train.tokenizer_distill import scale_groups
    groups = torch.randn(3, 5, 8, 4)
    out = scale_groups(groups, [0.25, 1.0], torch.Generator().manual_seed(0))
    ratio = out[..., :3] / groups[..., :3]
    per_group = ratio.reshape(3, 5, -1)
    torch.testing.assert_close(per_group, per_group[..., :1].expand_as(per_group))     # one factor per group
    assert per_group.min() >= 0.25 - 1e-6 and per_group.max() <= 1.0 + 1e-6 and per_group.std() > 0
    torch.testing.assert_close(out[..., 3:], groups[..., 3:])                          # extra channels untouched
    with pytest.raises(ConfigError, match="init_group_scale"):
        StudentTokenizerConfig(kind="compact", init_group_scale=[1.0, 0.5])


def test_tokenizer_distillation_with_group_scale_runs_end_to_end(tmp_path, tiny_teacher):
    cfg = tiny_distill(tmp_path, tiny_teacher, epochs=1)
    cfg.student.tokenizer = StudentTokenizerConfig(kind="compact", widths=[8, 16, 24], init_epochs=2,
                                                   init_group_scale=[0.3, 1.0])
    run_distill(cfg)
    init = json.loads((tmp_path / "tokenizer_init.json").read_text())
    assert len(init) == 2 and init[-1]["token_loss"] < init[0]["token_loss"]


def test_tokenizer_distillation_reads_denser_clouds_at_their_own_number_of_groups(tmp_path, tiny_teacher):
    from foundry_core.configs import TokenizerInitData
    from foundry_core.train import tokenizer_distill
    cfg = tiny_distill(tmp_path, tiny_teacher, epochs=1)
    dense = TokenizerInitData(data=tiny_data(num_points=512, augment=[]), num_groups=24, repeats=2)
    cfg.student.tokenizer = StudentTokenizerConfig(kind="compact", widths=[8, 16, 24], init_epochs=2, init_data=[dense])
    seen: list[tuple[int, int | None]] = []
    group = tokenizer_distill.PointTokenizer.group

    def spy(self, points, num_groups=None, generator=None):
        seen.append((points.shape[1], num_groups))
        return group(self, points, num_groups, generator)

    tokenizer_distill.PointTokenizer.group = spy
    try:
        run_distill(cfg)
    finally:
        tokenizer_distill.PointTokenizer.group = group
    init = json.loads((tmp_path / "tokenizer_init.json").read_text())
    assert len(init) == 2 and {"token_loss_data", "token_loss_init_data0"} <= set(init[0])
    assert init[-1]["token_loss_init_data0"] < init[0]["token_loss_init_data0"]
    # the dense clouds (512 points) are grouped at 24 centers, twice per init epoch, training split only
    from foundry_core.data.sources import make_datasets
    train, test = make_datasets(dense.data, cfg.run.seed)
    batches = -(-len(train) // cfg.optim.batch_size)
    assert seen.count((512, 24)) == 2 * 2 * batches and all(n == 24 for pts, n in seen if pts == 512)
    assert len(test) > 0                            # (read too, the count would be higher)
    with pytest.raises(ConfigError, match="repeats"):
        TokenizerInitData(repeats=0)


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_after_init_keeps_the_initialised_tokenizer_through_the_main_loop(tmp_path, tiny_teacher, frozen):
    import foundry_core.train.tokenizer_distill as module
    cfg = tiny_distill(tmp_path, tiny_teacher, epochs=2)
    cfg.student.tokenizer = StudentTokenizerConfig(kind="compact", widths=[8, 16, 24], init_epochs=1,
                                                   freeze_after_init=frozen)
    after_init: dict = {}
    distill = module.distill_tokenizer

    def keep(tokenizer, *args, **kw):
        out = distill(tokenizer, *args, **kw)
        after_init.update({k: v.detach().clone() for k, v in tokenizer.state_dict().items()})
        return out

    module.distill_tokenizer = keep
    try:
        res = run_distill(cfg)
    finally:
        module.distill_tokenizer = distill
    final = load_backbone(res["student"]).tokenizer.state_dict()
    same = all(torch.equal(final[k].float(), v.float()) for k, v in after_init.items())
    assert after_init and same == frozen            # frozen: as the init left it; else the main loop moves it
    assert all(("train_token_loss" in h) != frozen for h in res["history"])   # no token loss when frozen
    if frozen:
        with pytest.raises(ConfigError, match="freeze_after_init"):
            StudentTokenizerConfig(kind="compact", init_epochs=0, freeze_after_init=True)
