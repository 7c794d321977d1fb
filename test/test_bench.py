"""`foundry bench` end to end at toy size: the JSON / table / plot the issue asks for (not timings)."""
from __future__ import annotations

import json

import pytest

from foundry_core.cli import main

TOY = ["batch=2", "num_points=128", "num_groups=16", "group_size=8", "encoder=vit_t", "supertokens=[1,4]",
       "gate_budgets=[8]", "gate_supertokens=4", "scene_points=6000", "scene_max_points=1024", "scene_max_centers=32",
       "scene_budgets=[8]", "repeats=1", "warmup=0", "measure_memory=false", "threads=1"]


def _bench(tmp_path, *sets: str) -> dict:
    out = tmp_path / "bench_cpu.json"
    assert main(["bench", "--output", str(out), *sum((["--set", s] for s in [*TOY, *sets]), [])]) == 0
    return json.loads(out.read_text())


def test_bench_writes_the_documented_json(tmp_path):
    r = _bench(tmp_path, "onnxruntime=false", "settings=false")
    assert isinstance(r["machine"], str) and r["tokenize_2p18_s"] > 0 and r["tokenize_2p18_student_tokenizer_s"] > 0
    measured = {"teacher", "gate_budget_8", "tome16"} | {f"foundry_s{s}_{t}_tok" for s in (1, 4)
                                                           for t in ("teacher", "student")}
    names = measured | {"foundry_s1", "foundry_s4"}
    assert set(r["object"]) == names and set(r["scene"]) == names
    for part in ("object", "scene"):
        for v in r[part].values():
            assert v["latency_s"] > 0 and v["flops"] > 0 and v["params"] > 0 and v["peak_mem_mb"] is None
            assert "latency_onnxruntime_s" not in v
        for s in (1, 4):       # foundry_s<s>: the faster configuration, and which one it is
            sel = r[part][f"foundry_s{s}"]
            cands = {n: r[part][n]["latency_s"] for n in (f"foundry_s{s}_teacher_tok", f"foundry_s{s}_student_tok")}
            assert sel["configuration"] == min(cands, key=cands.get) == r["fastest"][part][f"foundry_s{s}"]
            assert sel["latency_s"] == min(cands.values())
        assert r["speedup_vs_teacher"][part]["torch"]["teacher"] == 1.0
    o = r["object"]
    teacher, s1 = o["teacher"], o["foundry_s1_teacher_tok"]
    assert s1["flops"] < teacher["flops"]                     # fewer tokens, fewer FLOPs (counted)
    assert o["foundry_s1_student_tok"]["flops"] < s1["flops"]  # the student tokenizer is cheaper
    assert o["foundry_s1_student_tok"]["params"] < s1["params"]
    c = r["flops_check"]
    assert abs(c["teacher_encoder_counted"] / c["teacher_encoder_analytic"] - 1) < 0.01
    table = (tmp_path / "bench_cpu.md").read_text()
    assert table.count("| teacher |") == 2 and table.count("foundry_s4_student_tok |") == 2
    assert "foundry_s1 (= foundry_s1_" in table
    assert (tmp_path / "bench_cpu.png").stat().st_size > 5000


@pytest.mark.slow
def test_bench_runs_the_exported_graphs_on_onnxruntime_and_measures_the_settings(tmp_path):
    r = _bench(tmp_path, "supertokens=[1]", "onnxruntime_only=[teacher,foundry_s1_student_tok]")
    for part in ("object", "scene"):
        rows = r[part]
        assert rows["teacher"]["latency_onnxruntime_s"] > 0 and rows["foundry_s1_student_tok"]["latency_onnxruntime_s"] > 0
        assert "latency_onnxruntime_s" not in rows["foundry_s1_teacher_tok"] and "latency_onnxruntime_s" not in rows["tome16"]
        # foundry_s1 is a copy of the faster (PyTorch) configuration: it has an ONNX latency when that one does
        alias = {"foundry_s1"} if "latency_onnxruntime_s" in rows["foundry_s1"] else set()
        assert rows["foundry_s1"]["configuration"] in ("foundry_s1_teacher_tok", "foundry_s1_student_tok")
        assert set(r["speedup_vs_teacher"][part]["onnxruntime"]) == {"teacher", "foundry_s1_student_tok"} | alias
    assert r["scene"]["foundry_s1_student_tok"]["timings_ms_onnxruntime"]["total"] > 0
    settings = r["inference_settings"]["latency_s"]
    levels = {k.rsplit(" ", 1)[-1] for k in settings if "onnxruntime" in k}
    assert levels == {"disable", "basic", "extended", "all"}
    assert {"teacher torch folded", "teacher torch unfolded", "foundry_s1_student_tok torch unfolded"} <= set(settings)
    assert "onnxruntime (ms)" in (tmp_path / "bench_cpu.md").read_text()
