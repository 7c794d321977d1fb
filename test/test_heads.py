"""Classification / segmentation heads, feature propagation, TaskModel end to end on a tiny backbone."""
import functools

import numpy as np
import pytest
import torch

from foundry_core.models.backbone import PointBackbone
from foundry_core.models.heads import ClassificationHead, SegmentationHead, TaskModel, propagate_to_points

from support.configs import tiny_model

DIM, DEPTH, B, N = 32, 2, 2, 64


def _cfg():
    return tiny_model(dim=DIM, depth=DEPTH, num_groups=8)


def _points(b=B, n=N, seed=0):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _backbone_out():
    torch.manual_seed(0)
    bb = PointBackbone(_cfg()).eval()
    pts = _points()
    with torch.no_grad():
        return bb(pts, generator=torch.Generator().manual_seed(0)), pts


def test_classification_head_logits():
    out, pts = _backbone_out()
    torch.manual_seed(0)
    head = ClassificationHead(DIM, num_classes=5).eval()
    logits = head(out, pts)
    assert logits.shape == (B, 5) and bool(torch.isfinite(logits).all())
    head.train()
    assert head(out, pts).shape == (B, 5)


def test_segmentation_head_without_category():
    out, pts = _backbone_out()
    torch.manual_seed(0)
    head = SegmentationHead(DIM, num_classes=4, layers=[1, 2]).eval()
    logits = head(out, pts)
    assert logits.shape == (B, N, 4) and bool(torch.isfinite(logits).all())
    assert head.token_features(out).shape == (B, 8, DIM)


def test_segmentation_head_with_category():
    out, pts = _backbone_out()
    torch.manual_seed(0)
    head = SegmentationHead(DIM, num_classes=6, layers=[2], num_categories=3).eval()
    cat = torch.tensor([0, 2])
    logits = head(out, pts, cat)
    assert logits.shape == (B, N, 6) and bool(torch.isfinite(logits).all())
    # the category embedding actually enters the logits
    assert not torch.allclose(logits, head(out, pts, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="category"):
        head(out, pts)


@pytest.mark.parametrize("layers", [[3], [0], [1, 5], [-1]])
def test_segmentation_layers_outside_depth_raise(layers):
    out, pts = _backbone_out()
    head = SegmentationHead(DIM, num_classes=4, layers=layers).eval()
    with pytest.raises(ValueError, match="outside the encoder"):
        head(out, pts)


def test_propagate_coinciding_point_takes_center_feature():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(2, 10, 3, generator=g)
    feats = torch.randn(2, 10, 5, generator=g)
    perm = torch.tensor([3, 0, 9, 7])
    out = propagate_to_points(feats, centers, centers[:, perm])
    torch.testing.assert_close(out, feats[:, perm], rtol=1e-5, atol=1e-5)


def test_propagate_is_inverse_distance_convex_combination():
    g = torch.Generator().manual_seed(2)
    centers = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 10, 5, generator=g, dtype=torch.float64)
    pts = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    out = propagate_to_points(feats, centers, pts)
    assert out.shape == (2, 30, 5)
    lo, hi = feats.min(1).values.unsqueeze(1), feats.max(1).values.unsqueeze(1)
    assert bool((out >= lo - 1e-9).all() and (out <= hi + 1e-9).all())
    # numpy reference: 3 nearest centers weighted by 1 / squared distance
    c, f, p = centers.numpy(), feats.numpy(), pts.numpy()
    for b in range(2):
        d = ((p[b][:, None] - c[b][None]) ** 2).sum(-1)
        nn3 = np.argsort(d, axis=1)[:, :3]
        w = 1.0 / np.take_along_axis(d, nn3, 1)
        w /= w.sum(1, keepdims=True)
        ref = (f[b][nn3] * w[..., None]).sum(1)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-10, atol=1e-12)


def test_propagate_with_fewer_centers_than_k():
    centers = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    feats = torch.tensor([[[0.0], [1.0]]])
    out = propagate_to_points(feats, centers, torch.tensor([[[0.5, 0, 0], [0.25, 0, 0]]]))
    torch.testing.assert_close(out, torch.tensor([[[0.5], [0.1]]]))   # w ∝ 1/d²: 16 : 1.777.. -> 0.1


@pytest.mark.parametrize("task", ["cls", "partseg"])
def test_task_model_end_to_end(task):
    torch.manual_seed(0)
    backbone = PointBackbone(_cfg())
    if task == "cls":
        head, cat, shape = ClassificationHead(DIM, 7), None, (B, 7)
    else:
        head, cat, shape = SegmentationHead(DIM, 5, [1, 2], num_categories=2), torch.tensor([1, 0]), (B, N, 5)
    model = TaskModel(backbone, head).train()
    logits = model(_points(seed=3), cat)
    assert logits.shape == shape and bool(torch.isfinite(logits).all())
    logits.logsumexp(-1).mean().backward()
    # (the encoder's final LayerNorm is unused by the seg head, which normalises hidden states itself)
    params = [*model.backbone.encoder.blocks.parameters(), *model.backbone.tokenizer.parameters(),
              *model.head.parameters()]
    grads = [p.grad for p in params]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(_points(seed=3), cat).shape == shape


def test_point_geometry_reads_the_offset_from_the_nearest_center_and_folds_exactly():
    """The head with point_geometry: the offsets change the logits (the input is used), and the
    folded inference path (first layer on the tokens + the offsets' term) is the same function."""
    from foundry_core.models.backbone import pooled_features
    from foundry_core.models.heads import interpolation_weights, nearest_offsets
    out, pts = _backbone_out()
    torch.manual_seed(0)
    head = SegmentationHead(DIM, 5, [1, 2], hidden=(32, 16), point_geometry=True).eval()
    with torch.no_grad():
        for m in head.mlp:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        ref = head(out, pts)
        shifted = head(out, pts + torch.tensor([0.0, 0.0, 0.05]))   # same nearest centers, other offsets
        assert not torch.allclose(ref, shifted)
        folded = head.folded_mlp()
        feats, centers = head.token_features(out), out.tokens.centers
        idx, _ = interpolation_weights(centers, pts, 3)
        for b in range(B):
            table = folded.project_tokens(feats[b]).unsqueeze(0)
            first = propagate_to_points(table, centers[b:b + 1], pts[b:b + 1], idx=idx[b:b + 1])[0]
            first = first + folded.geometry(nearest_offsets(centers[b:b + 1], pts[b:b + 1], idx[b:b + 1])[0])
            logits = folded(first, folded.global_bias(pooled_features(feats[b:b + 1])[0]))
            assert torch.allclose(logits, ref[b], atol=1e-5)
