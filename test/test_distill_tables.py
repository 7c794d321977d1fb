"""The distillation tables stage (paper Tables 1/2/4/5 and Fig. 2 at CPU scale) and its probes."""
import json

import pytest
import torch
import yaml

from foundry_core.cli import main
from foundry_core.typed_yaml import ConfigError, load_config
from foundry_core.models.backbone import PointBackbone
from foundry_core.models.io import load_backbone
from foundry_core.models.student import FoundryStudent
from foundry_core.stages.distill import Distiller
from foundry_core.stages.distill_tables import DistillTablesConfig, TaskSpec, table_methods
from foundry_core.train.seg_probe import SegProbeConfig, fit_seg_probe, point_features, point_geometry


def _geometry(m: int, labels_from, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(m, 16, 3, generator=g)
    points = torch.rand(m, 128, 3, generator=g)
    tokens = torch.randn(m, 16, 8, generator=g)
    geo = point_geometry(centers, points, torch.zeros(m, 128, dtype=torch.long))
    geo.labels = labels_from(point_features(tokens, geo.idx, geo.weight), g)
    return tokens, geo


def test_seg_probe_reads_labels_carried_by_the_tokens_and_not_noise():
    carried = lambda f, g: (f[..., 0] > 0).long()                    # noqa: E731  (the point's own feature)
    noise = lambda f, g: torch.randint(0, 2, f.shape[:2], generator=g)  # noqa: E731
    cfg = SegProbeConfig(epochs=40, points_per_cloud=64, hidden=32, lr=5e-3)
    tr, gtr = _geometry(48, carried, 0)
    te, gte = _geometry(16, carried, 1)
    good = fit_seg_probe(tr, gtr, te, gte, 2, cfg)["miou"]
    tr, gtr = _geometry(48, noise, 0)
    te, gte = _geometry(16, noise, 1)
    bad = fit_seg_probe(tr, gtr, te, gte, 2, cfg)["miou"]
    assert good > 75 and bad < 60, (good, bad)


def test_seg_probe_instance_miou_only_predicts_allowed_parts():
    tokens, geo = _geometry(8, lambda f, g: torch.full(f.shape[:2], 2), 0)
    geo.allowed = torch.zeros(8, 4, dtype=torch.bool)
    geo.allowed[:, 2] = True                                           # one allowed part: always right
    res = fit_seg_probe(tokens, geo, tokens, geo, 4, SegProbeConfig(epochs=1, points_per_cloud=8, hidden=4))
    assert res["instance_miou"] == pytest.approx(100.0)


def test_teacher_encode_matches_forward_and_refuses_budgets(tiny_teacher):
    teacher = load_backbone(tiny_teacher).eval()
    assert isinstance(teacher, PointBackbone)
    pts = torch.randn(2, 128, 3)
    tok = teacher.tokenizer(pts, generator=torch.Generator().manual_seed(0))
    full = teacher(pts, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(teacher.encode(tok).last, full.last)
    with pytest.raises(ValueError, match="student"):
        teacher.encode(tok, budget=4)


def test_distiller_reuses_frozen_tokenizer_tokens_exactly(tiny_teacher):
    teacher = load_backbone(tiny_teacher).eval()
    student = FoundryStudent.from_teacher(teacher, 4)
    d = Distiller(teacher, student).eval()
    tok = student.tokenizer(torch.randn(2, 128, 3), generator=torch.Generator().manual_seed(0))
    reused = d.teacher_output(tok).last
    student.tokenizer_frozen = False                                   # force the recomputing path
    assert torch.allclose(d.teacher_output(tok).last, reused, atol=1e-6)


TINY = """
seeds: [0, 1]
supertokens: [1, 4]
reduced_tokens: 4
gate_budgets: [4, 8]
gate_thresholds: [0.5]
gate_merge_fractions: [0.25, 0.75]
batch_size: 16
teacher:
  model: {encoder: custom, dim: 32, depth: 3, heads: 2, num_groups: 16, group_size: 8}
  data: {source: synthetic, synthetic_shapes: 48, num_points: 256}
  optim: {epochs: 1, batch_size: 16}
  jepa: {predictor_dim: 32, predictor_depth: 1, predictor_heads: 2}
  run: {seed: 0, eval_every: 0, progress: false}
specialist_task:
  task: cls
  model: {encoder: custom, dim: 32, depth: 3, heads: 2, num_groups: 16, group_size: 8}
  data: {source: synthetic, synthetic_shapes: 48, num_points: 256}
  optim: {epochs: 1, batch_size: 16}
  run: {seed: 0, eval_every: 0, progress: false}
distill:
  data: {source: synthetic, synthetic_shapes: 48, num_points: 256}
  optim: {epochs: 1, batch_size: 16}
  eval_probe: false
  run: {eval_every: 1, progress: false}
tasks:
  - {name: shapes_cls, kind: cls, metric: acc, data: {source: synthetic, synthetic_shapes: 48, num_points: 256}}
  - {name: scene_seg, kind: seg, metric: miou, num_groups: 24,
     data: {source: sim_scenes, synthetic_shapes: 10, num_points: 512, with_seg: true}}
  - {name: parts_seg, kind: seg, metric: instance_miou,
     data: {source: synthetic, synthetic_shapes: 48, num_points: 256, with_seg: true}}
seg_probe: {epochs: 2, points_per_cloud: 64, hidden: 16}
probe: {cv_grid: [0.01, 0.1]}
"""


def test_distill_tables_end_to_end_writes_the_schema_and_resumes(tmp_path, capsys):
    cfg = yaml.safe_load(TINY)
    cfg["out_dir"] = str(tmp_path / "runs")
    cfg["teacher"]["run"]["out_dir"] = str(tmp_path / "teacher")
    cfg["specialist_task"]["run"]["out_dir"] = str(tmp_path / "task")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "results" / "distill.json"
    assert main(["distill-tables", "--config", str(path), "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    names = table_methods(load_config(DistillTablesConfig, path))
    assert set(res["methods"]) == names                                 # every table row, nothing else
    assert set(res["gate_thresholds"]) == {"gate_r0.5", "gate_merge25", "gate_merge75"} and set(res["additional_methods"]) == {"tome4_fmd"}
    for group in ("methods", "gate_thresholds", "additional_methods"):
        for name, tasks in res[group].items():
            assert set(tasks) == {"shapes_cls", "scene_seg", "parts_seg"}, name
            for scores in tasks.values():
                assert len(scores) == 2 and all(0.0 <= s <= 100.0 for s in scores), (name, scores)
    tok = res["tokens_in_encoder"]
    assert tok["teacher"]["shapes_cls"] == [16.0, 16.0] and tok["teacher"]["scene_seg"] == [24.0, 24.0]
    assert tok["random4"]["shapes_cls"] == [4.0, 4.0]
    assert max(tok["gate_budget_4"]["shapes_cls"]) <= 4 and max(tok["foundry_s1"]["shapes_cls"]) <= 1
    assert res["distill_loss_to_teacher"]["teacher"] == [0.0, 0.0]
    # thresholds from the training split's pi quantiles: merging more needs a lower r, leaves fewer tokens
    r = res["fusion_threshold_r"]
    assert r["gate_r0.5"] == [0.5, 0.5] and all(a > b for a, b in zip(r["gate_merge25"], r["gate_merge75"]))
    assert sum(tok["gate_merge75"]["shapes_cls"]) < sum(tok["gate_merge25"]["shapes_cls"])
    assert all(v is not None for v in res["val_distill_loss"]["foundry_s4"])
    assert "retention_s4_pct_of_teacher" in res["targets"]["shapes_cls"]
    assert out.with_suffix(".md").read_text().count("| foundry_s4 |") == 1
    assert out.with_suffix(".png").stat().st_size > 10_000
    capsys.readouterr()
    # a second run reloads every distillation and every score: same table, nothing retrained
    assert main(["distill-tables", "--config", str(path), "--output", str(out)]) == 0
    assert "distilling" not in capsys.readouterr().out
    assert json.loads(out.read_text())["methods"] == res["methods"]


def test_distill_tables_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least one task"):
        DistillTablesConfig(tasks=[])
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [{name: a}, {name: a}]\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(DistillTablesConfig, path)
    with pytest.raises(ConfigError, match="gate_merge_fractions"):
        DistillTablesConfig(tasks=[TaskSpec(name="a")], gate_merge_fractions=[1.5])
