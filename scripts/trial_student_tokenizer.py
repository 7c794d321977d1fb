"""Accuracy price of the student tokenizer (issue 13): Foundry s = 16 distilled with the teacher's
tokenizer (a frozen copy) and with a student tokenizer of its own (student.tokenizer.kind: compact,
tokenizer-only initialisation + the token-level loss), everything else equal, scored on the three
tasks of config/distill_tables_infomr.yaml with the same frozen-backbone probes as distill.json.

    .venv/bin/python scripts/trial_student_tokenizer.py [--seeds 0] [--init-epochs 2]
        [--init-data-task mosd_seg --init-data-repeats 8]     # + scene-density groups in the tokenizer init
        [--freeze-after-init] [--scale-free]                   # tokenizer fixed after init; unit-radius groups
        -> docs/results/distill_trials/student_tokenizer.json

The teacher run of the config is reused when complete (else pre-trained first, ~25 min on 2 cores).
Finished distillations are reloaded, so an interrupted trial resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from foundry_core.configs import StudentTokenizerConfig, TokenizerInitData
from foundry_core.models.io import load_backbone
from foundry_core.stages.distill import run_distill
from foundry_core.stages.distill_tables import DistillTables, DistillTablesConfig, tokenize_task
from foundry_core.typed_yaml import load_config, to_dict

TARGET_POINTS = 1.0      # the price: at most 1 point on each task
DEFAULTS = {"widths": [64, 128, 256], "init_epochs": 2, "token_loss_weight": 1.0}   # the default variant's settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/distill_tables_infomr.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--supertokens", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs=3, default=DEFAULTS["widths"])
    ap.add_argument("--init-epochs", type=int, default=DEFAULTS["init_epochs"])
    ap.add_argument("--token-loss-weight", type=float, default=DEFAULTS["token_loss_weight"])
    ap.add_argument("--init-group-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="tokenizer-only distillation on groups scaled by a log-uniform factor in [LO, HI]")
    ap.add_argument("--init-data-task", default=None, metavar="TASK",
                    help="tokenizer-only distillation also on this task's training clouds (unlabelled, its own "
                         "num_groups; its test split is never read), e.g. mosd_seg")
    ap.add_argument("--init-data-repeats", type=int, default=1, help="passes over those clouds per init epoch")
    ap.add_argument("--freeze-after-init", action="store_true",
                    help="the main distillation loop keeps the initialised tokenizer fixed")
    ap.add_argument("--scale-free", action="store_true",
                    help="the student tokenizer sees each group at unit radius, with log radius as an input")
    ap.add_argument("--combine", nargs="+", default=None, metavar="RECORD",
                    help="no training: merge trial records of the same variant run on other seeds (each "
                         "scored as above) into one record with the price over all their seeds (--output)")
    ap.add_argument("--out-dir", default="runs/distill_trials/student_tokenizer")
    ap.add_argument("--output", default="", help="default docs/results/distill_trials/student_tokenizer<tag>.json")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.output)
    cfg = load_config(DistillTablesConfig, args.config)
    tables = DistillTables(cfg)
    out_dir = Path(args.out_dir)
    t0 = time.time()
    teacher_path = tables.teacher_path()
    teacher = load_backbone(teacher_path).eval()
    tok_cfg = StudentTokenizerConfig(kind="compact", widths=list(args.widths), init_epochs=args.init_epochs,
                                     token_loss_weight=args.token_loss_weight,
                                     init_group_scale=list(args.init_group_scale) if args.init_group_scale else None,
                                     init_data=init_data(cfg, args), freeze_after_init=args.freeze_after_init,
                                     scale_free=args.scale_free)
    variants = {"teacher_tokenizer": StudentTokenizerConfig(), "student_tokenizer": tok_cfg}
    result: dict = {"config": args.config, "teacher": teacher_path, "supertokens": args.supertokens,
                    "student_tokenizer": to_dict(tok_cfg), "seeds": args.seeds, "scores": {}, "price_points": {},
                    "distill": {"data": to_dict(cfg.distill.data), "optim": to_dict(cfg.distill.optim),
                                "student": to_dict(cfg.distill.student)}}
    for seed in args.seeds:
        paths = {}
        for name, tcfg in variants.items():
            dcfg = copy.deepcopy(cfg.distill)
            dcfg.teacher, dcfg.run.seed = teacher_path, seed
            dcfg.run.out_dir = str(out_dir / f"{name}{variant_tag(args) if tcfg.kind != 'teacher' else ''}"
                                             f"_s{args.supertokens}_seed{seed}")
            dcfg.student.supertokens, dcfg.student.tokenizer = args.supertokens, tcfg
            path = Path(dcfg.run.out_dir) / "student.safetensors"
            if not path.is_file():
                print(f"[trial] seed {seed}: distilling {name}", flush=True)
                run_distill(dcfg, resume=True)
            paths[name] = path
        caches = {t.name: tokenize_task(t, teacher.tokenizer, seed, cfg.batch_size) for t in cfg.tasks}
        ref: dict = {"C": {}}
        rows = {"teacher": tables.score(teacher, caches, ref, seed)}       # sets the probe C, as distill.json
        for name, path in paths.items():
            rows[name] = tables.score(load_backbone(path), caches, ref, seed)
            rows[name]["val_distill_loss"] = last_metric(path, "val_distill_loss")
            rows[name]["train_token_loss"] = last_metric(path, "train_token_loss")
        for name, row in rows.items():
            for task, score in row["scores"].items():
                result["scores"].setdefault(name, {}).setdefault(task, []).append(score)
            print(f"[trial] seed {seed}: {name:18s} " + "  ".join(f"{k} {v:.2f}" for k, v in row["scores"].items()),
                  flush=True)
        result.setdefault("per_seed", {})[seed] = rows
    result["elapsed_s"] = time.time() - t0
    write_record(result, Path(args.output or f"docs/results/distill_trials/student_tokenizer{variant_tag(args)}.json"))
    return 0


def write_record(result: dict, out: Path) -> None:
    """Price per task (mean over the seeds of teacher-tokenizer minus student-tokenizer score) -> out."""
    for task in result["scores"]["teacher"]:
        tt, st = result["scores"]["teacher_tokenizer"][task], result["scores"]["student_tokenizer"][task]
        result["price_points"][task] = sum(tt) / len(tt) - sum(st) / len(st)
        result.setdefault("price_points_per_seed", {})[task] = [a - b for a, b in zip(tt, st)]
    result["within_target"] = {task: price <= TARGET_POINTS for task, price in result["price_points"].items()}
    result["target"] = f"student tokenizer at most {TARGET_POINTS:g} point below the teacher-tokenizer student per task"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"[trial] seeds {result['seeds']}: price (points, teacher tokenizer - student tokenizer): "
          f"{result['price_points']} -> {out}", flush=True)


def combine(paths: list[str], output: str) -> int:
    """Merge records of one variant on different seeds (same config, teacher, student tokenizer and
    distillation settings, checked) into one record over all their seeds."""
    if not output:
        raise SystemExit("--combine needs --output")
    records = [json.loads(Path(p).read_text()) for p in paths]
    same = ("config", "teacher", "supertokens", "student_tokenizer", "distill")
    for p, r in zip(paths[1:], records[1:]):
        diff = [k for k in same if r.get(k) != records[0].get(k)]
        if diff:
            raise SystemExit(f"--combine: {p} differs from {paths[0]} in {diff}: not the same variant")
    seeds = [s for r in records for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--combine: a seed appears twice ({seeds})")
    result = {k: records[0][k] for k in same}
    result.update(seeds=seeds, scores={}, price_points={}, per_seed={}, combined_from=list(paths),
                  elapsed_s=sum(r.get("elapsed_s", 0.0) for r in records))
    for r in records:
        result["per_seed"].update(r["per_seed"])
        for name, tasks in r["scores"].items():
            for task, values in tasks.items():
                result["scores"].setdefault(name, {}).setdefault(task, []).extend(values)
    write_record(result, Path(output))
    return 0


def init_data(cfg: DistillTablesConfig, args) -> list[TokenizerInitData]:
    """--init-data-task: that task's data (same split, so its test clouds stay unseen) at its num_groups."""
    if not args.init_data_task:
        return []
    tasks = {t.name: t for t in cfg.tasks}
    if args.init_data_task not in tasks:
        raise SystemExit(f"--init-data-task {args.init_data_task}: not a task of {args.config} ({sorted(tasks)})")
    task = tasks[args.init_data_task]
    return [TokenizerInitData(data=copy.deepcopy(task.data), num_groups=task.num_groups,
                              repeats=args.init_data_repeats)]


def variant_tag(args) -> str:
    """'' for the default student tokenizer, else its settings (other settings get their own runs)."""
    tag = ""
    if list(args.widths) != DEFAULTS["widths"]:
        tag += "_w" + "-".join(map(str, args.widths))
    if args.init_epochs != DEFAULTS["init_epochs"]:
        tag += f"_init{args.init_epochs}"
    if args.token_loss_weight != DEFAULTS["token_loss_weight"]:
        tag += f"_tw{args.token_loss_weight:g}"
    if args.init_group_scale:
        tag += "_gs{:g}-{:g}".format(*args.init_group_scale)
    if args.init_data_task:
        tag += f"_scene_init_x{args.init_data_repeats}"
    if args.freeze_after_init:
        tag += "_frozen"
    if args.scale_free:
        tag += "_scale_free"
    return tag


def last_metric(student_path: Path, key: str) -> float | None:
    metrics = student_path.parent / "metrics.json"
    if not metrics.is_file():
        return None
    vals = [h[key] for h in json.loads(metrics.read_text()) if key in h]
    return float(vals[-1]) if vals else None


if __name__ == "__main__":
    raise SystemExit(main())
