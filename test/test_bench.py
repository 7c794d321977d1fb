"""`foundry bench` end to end at toy size: the JSON / table / plot the issue asks for (not timings)."""
from __future__ import annotations

import json

from foundry_core.cli import main


def test_bench_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench_cpu.json"
    sets = ["batch=2", "num_points=128", "num_groups=16", "group_size=8", "encoder=vit_t", "supertokens=[1,4]",
            "gate_budgets=[8]", "gate_supertokens=4", "scene_points=6000", "scene_max_points=1024", "scene_max_centers=32",
            "scene_budgets=[8]", "repeats=1", "warmup=0", "measure_memory=false", "threads=1"]
    assert main(["bench", "--output", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    r = json.loads(out.read_text())
    assert isinstance(r["machine"], str) and r["tokenize_2p18_s"] > 0
    names = {"teacher", "foundry_s1", "foundry_s4", "gate_budget_8", "tome16"}
    assert set(r["object"]) == names and set(r["scene"]) == names
    for part in ("object", "scene"):
        for v in r[part].values():
            assert v["latency_s"] > 0 and v["flops"] > 0 and v["params"] > 0 and v["peak_mem_mb"] is None
    teacher, s1 = r["object"]["teacher"], r["object"]["foundry_s1"]
    assert s1["flops"] < teacher["flops"]                     # fewer tokens, fewer FLOPs (counted)
    c = r["flops_check"]
    assert abs(c["teacher_encoder_counted"] / c["teacher_encoder_analytic"] - 1) < 0.01
    assert out.with_suffix(".md").read_text().count("| teacher |") == 2
    assert out.with_suffix(".png").stat().st_size > 5000
