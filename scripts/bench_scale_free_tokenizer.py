#!/usr/bin/env python3
"""What the scale-free student tokenizer costs next to the plain one (issue 13): `foundry bench`'s object
set (64 clouds x 1,024 points, ViT-S, random weights) with the teacher, Foundry s = 1 / 16 with the
plain compact student tokenizer (the bench's *_student_tok rows) and with student.tokenizer.scale_free,
latencies interleaved in one process (foundry_core.stages.bench.interleaved_latency):

    .venv/bin/python scripts/bench_scale_free_tokenizer.py [--repeats 7]
        -> docs/results/distill_trials/student_tokenizer_scale_free_speed.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="docs/results/distill_trials/student_tokenizer_scale_free_speed.json")
    args = ap.parse_args()

    from foundry_core.models.student import FoundryStudent
    from foundry_core.stages.bench import BenchConfig, frozen, interleaved_latency, make_teacher, object_points
    from foundry_core.stages.common import write_json

    cfg = BenchConfig(repeats=args.repeats)
    teacher = make_teacher(cfg)
    pts = object_points(cfg)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)            # noqa: E731 - same FPS start for all
    plain = cfg.student_tokenizer
    scale_free = dataclasses.replace(plain, scale_free=True)
    fns = {"teacher": lambda: teacher(pts, gen())}
    for s in (1, 16):
        for tag, tok in (("student_tok", plain), ("student_tok_scale_free", scale_free)):
            st = frozen(FoundryStudent.from_teacher(teacher, s, tokenizer_pointnet=tok.pointnet))
            fns[f"foundry_s{s}_{tag}"] = lambda st=st: st(pts, gen())
    lat = interleaved_latency(fns, cfg.repeats, cfg.warmup)
    result = {"batch": cfg.batch, "num_points": cfg.num_points, "encoder": cfg.encoder, "threads": torch.get_num_threads(),
              "repeats": cfg.repeats, "latency_s": lat,
              "speedup_vs_teacher": {k: lat["teacher"] / v for k, v in lat.items()},
              "scale_free_over_plain": {f"s{s}": lat[f"foundry_s{s}_student_tok_scale_free"] /
                                        lat[f"foundry_s{s}_student_tok"] for s in (1, 16)}}
    out = write_json(args.out, result)
    for k, v in lat.items():
        print(f"[bench] {k:34s} {v * 1e3:8.1f} ms  {lat['teacher'] / v:5.2f}x")
    print(f"[bench] -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
