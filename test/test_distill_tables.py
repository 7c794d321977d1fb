"""The distillation tables stage (paper Tables 1/2/4/5 and Fig. 2 at CPU scale) and its probes."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from foundry_core.cli import main
from foundry_core.typed_yaml import ConfigError, load_config, to_dict
from foundry_core.models.backbone import PointBackbone, pooled_features
from foundry_core.models.io import load_backbone
from foundry_core.models.student import FoundryStudent
from foundry_core.stages.distill import Distiller
from foundry_core.stages.distill_tables import DistillTablesConfig, TaskSpec, table_methods, tokenize_task
from foundry_core.train.probe import fit_linear_probe
from foundry_core.train.seg_probe import SegProbeConfig, fit_seg_probe, point_features, point_geometry

from support.configs import tiny_distill, tiny_finetune, tiny_pretrain


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


# the stage's own options; teacher, specialist_task and distill are the tiny configs of support.configs
TINY = """
seeds: [0, 1]
supertokens: [1, 4]
reduced_tokens: 4
gate_budgets: [4, 8]
gate_thresholds: [0.5]
gate_merge_fractions: [0.25, 0.75]
batch_size: 16
tasks:
  - {name: shapes_cls, kind: cls, metric: acc, data: {source: synthetic, synthetic_shapes: 48, num_points: 128}}
  - {name: scene_seg, kind: seg, metric: miou, num_groups: 12,
     data: {source: sim_scenes, num_points: 512, with_seg: true,
            options: {num_scenes: 15, lidar: {beams: 16, azimuth_samples: 512}}}}
  - {name: parts_seg, kind: seg, metric: instance_miou,
     data: {source: synthetic, synthetic_shapes: 48, num_points: 128, with_seg: true}}
seg_probe: {epochs: 2, points_per_cloud: 64, hidden: 16}
probe: {cv_grid: [0.01, 0.1]}
"""


def _tiny_tables(tmp_path: Path, teacher_dir: Path) -> Path:
    cfg = yaml.safe_load(TINY)
    cfg["out_dir"] = str(tmp_path / "runs")
    cfg["teacher"] = to_dict(tiny_pretrain(teacher_dir, epochs=1))   # the session teacher's run: reused
    cfg["specialist_task"] = to_dict(tiny_finetune(tmp_path / "task", epochs=1))
    distill = to_dict(tiny_distill(tmp_path / "distill", teacher="", epochs=1))
    distill["eval_probe"], distill["run"]["eval_every"] = False, 1
    cfg["distill"] = distill
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@torch.no_grad()
def _teacher_accuracy(teacher_path: str, cfg: DistillTablesConfig, seed: int, C: float) -> float:
    """The teacher's probe accuracy on a cls task, recomputed without the stage's scoring: the same
    seeded tokens (tokenize_task), the teacher's encoder, max+mean pooling, a linear probe with C."""
    teacher = load_backbone(teacher_path).eval()
    cache = tokenize_task(cfg.tasks[0], teacher.tokenizer, seed, cfg.batch_size)
    feats = {split: pooled_features(torch.cat([teacher.encode(t).last for t in toks])).numpy()
             for split, toks in cache.tokens.items()}
    return fit_linear_probe(feats["train"], cache.labels["train"].numpy(), feats["test"],
                            cache.labels["test"].numpy(), cfg.probe, C=C)


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")          # tiny tensors: a second thread only adds contention
def test_distill_tables_end_to_end_writes_the_schema_and_resumes(tmp_path, capsys, tiny_teacher):
    teacher_dir = tmp_path / "teacher"
    shutil.copytree(Path(tiny_teacher).parent, teacher_dir)          # a copy: the session teacher stays as it is
    path = _tiny_tables(tmp_path, teacher_dir)
    out = tmp_path / "results" / "distill.json"
    assert main(["distill-tables", "--config", str(path), "--output", str(out)]) == 0
    first = capsys.readouterr().out
    assert "distilling" in first and "[pretrain] epoch" not in first          # the teacher was reused
    res = json.loads(out.read_text())
    cfg = load_config(DistillTablesConfig, path)
    names = table_methods(cfg)
    assert set(res["methods"]) == names                                 # every table row, nothing else
    assert set(res["gate_thresholds"]) == {"gate_r0.5", "gate_merge25", "gate_merge75"} and set(res["additional_methods"]) == {"tome4_fmd"}
    for group in ("methods", "gate_thresholds", "additional_methods"):
        for name, tasks in res[group].items():
            assert set(tasks) == {"shapes_cls", "scene_seg", "parts_seg"}, name
            assert all(len(scores) == 2 for scores in tasks.values()), (name, tasks)
    # the teacher's row is the score recomputed independently, per seed, with the C the stage chose on
    # the teacher's training features (one of cv_grid)
    for i, seed in enumerate(cfg.seeds):
        C = res["probe_C"][str(seed)]["shapes_cls"]
        assert C in cfg.probe.cv_grid
        assert res["methods"]["teacher"]["shapes_cls"][i] == pytest.approx(
            _teacher_accuracy(res["teacher"], cfg, seed, C)), seed
    tok = res["tokens_in_encoder"]
    assert tok["teacher"]["shapes_cls"] == [16.0, 16.0] and tok["teacher"]["scene_seg"] == [12.0, 12.0]
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
