"""`foundry` command line: one sub-command per stage, each driven by a YAML config in config/."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .data.shapeset import DatasetFormatError
from .typed_yaml import ConfigError, load_config


def _config_dir() -> Path:
    """config/ of a source checkout, else the copy installed under <prefix>/share/foundry_ros/config."""
    here = Path(__file__).resolve().parent.parent / "config"
    return here if here.is_dir() else Path(sys.prefix) / "share" / "foundry_ros" / "config"


CONFIG_DIR = _config_dir()


def _config_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--config", default=default, help=f"YAML config (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.epochs=5 (repeatable)")


def _default(name: str) -> str | None:
    path = CONFIG_DIR / name
    return str(path) if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="foundry", description="Foundry core: pre-train, fine-tune and "
                                 "evaluate 3D point-cloud foundation models (no ROS needed).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="STAGE")

    p = sub.add_parser("pretrain", help="Point-JEPA pre-training of a teacher backbone")
    _config_arg(p, _default("pretrain_synthetic.yaml"))
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.safetensors")

    p = sub.add_parser("finetune", help="fine-tune a backbone with a classification/segmentation head")
    _config_arg(p, _default("finetune_synthetic.yaml"))
    p.add_argument("--init", help="pre-trained backbone (.safetensors); omit for random initialisation")
    p.add_argument("--resume", action="store_true")

    p = sub.add_parser("batchnorm-bank", help="add BatchNorm statistics per operating point (recomputed on the "
                       "config's training data) to an exported task model")
    _config_arg(p, _default("finetune_synthetic.yaml"))
    p.add_argument("--model", required=True, help="exported task model (model.safetensors)")
    p.add_argument("--out", required=True, help="where the model with its BatchNorm bank is written")
    p.add_argument("--points", nargs="+", metavar="NAME", help="recompute only these operating points (e.g. one "
                   "added to the config's list) and keep the model's statistics for the others")

    p = sub.add_parser("distill", help="distill a teacher into a Foundry student (DSO + encoder + CAU, "
                       "optional Foundry-Gate)")
    _config_arg(p, _default("distill_synthetic.yaml"))
    p.add_argument("--teacher", help="teacher backbone (.safetensors)")
    p.add_argument("--supertokens", type=int, help="number of SuperTokens s")
    p.add_argument("--frozen-student", action="store_true", help="keep the student encoder fixed")
    p.add_argument("--gate", action="store_true", help="train the Foundry-Gate (token budgets at inference)")
    p.add_argument("--gate-lambda", type=float, help="gate regulariser weight")
    p.add_argument("--resume", action="store_true")

    p = sub.add_parser("evaluate", help="test metrics of an exported model, or linear probe of a backbone")
    _config_arg(p, _default("finetune_synthetic.yaml"))
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="exported task model (model.safetensors of a finetune run)")
    g.add_argument("--backbone", help="exported backbone: report its linear-probe accuracy")

    p = sub.add_parser("experiment", help="pre-training vs random initialisation (probe + fine-tune, "
                       "several seeds) -> docs/results/pretrain.json")
    _config_arg(p, _default("experiment_shapes69.yaml"))
    p.add_argument("--output", default="docs/results/pretrain.json")

    p = sub.add_parser("distill-tables", help="the paper's distillation tables at CPU scale: teacher, Foundry "
                       "s=1/4/16, frozen, Foundry-Gate budgets, random / ToMe / K-Means, specialist, several "
                       "seeds, frozen-backbone probes -> docs/results/distill.json (+ .md, .png)")
    _config_arg(p, _default("distill_tables_infomr.yaml"))
    p.add_argument("--output", default="docs/results/distill.json")

    p = sub.add_parser("export", help="export a task model to ONNX (dynamic batch / centers / budget / points) "
                       "and optionally build its TensorRT engine ahead of time")
    p.add_argument("--model", required=True, help="exported task model (model.safetensors of a finetune run)")
    p.add_argument("--onnx", required=True, help="output .onnx path")
    p.add_argument("--tensorrt", action="store_true", help="also build (or validate) the TensorRT engine in the cache")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="TensorRT precision")
    p.add_argument("--cache-dir", default="", help="engine cache (default $FOUNDRY_CACHE_DIR or ~/.cache/foundry)")
    p.add_argument("--max-points", type=int, default=131072, help="TensorRT profile: most points per cloud")
    p.add_argument("--min-centers", type=int, default=32)
    p.add_argument("--max-centers", type=int, default=1024)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")

    p = sub.add_parser("bench", help="cost benchmark (paper Tables 6/7): teacher vs Foundry vs Foundry-Gate vs "
                       "ToMe, one process -> docs/results/bench_<device>.json/.md/.png")
    p.add_argument("--output", default="", help="default docs/results/bench_<cpu|cuda>.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a BenchConfig field, e.g. --set repeats=3")

    p = sub.add_parser("model-card", help="held-out accuracy and latency per token budget of a scene model "
                       "-> docs/model_card.md (+ .json, .png); optionally ship it as fp16 weights")
    _config_arg(p, None)
    p.add_argument("--model", required=True)
    p.add_argument("--ship", default="", help="write the fp16 copy the node loads by default here")
    p.add_argument("--out", default="docs/model_card.md")

    p = sub.add_parser("demo", help="the embedded default: pre-train a tiny teacher on generated shapes "
                       "and print its probe accuracy against a random encoder")
    _config_arg(p, _default("demo.yaml"))
    return ap


def main(argv: list[str] | None = None) -> int:
    from .train.distributed import shutdown_distributed
    from .train.trainer import NonFiniteLossError
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, CheckpointError, DatasetFormatError, NonFiniteLossError) as e:
        print(f"foundry {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if args.command != "export":
            raise
        print(f"foundry export: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()


def _dispatch(args: argparse.Namespace) -> int:
    from .configs import FinetuneConfig, PretrainConfig

    if args.command == "pretrain":
        from .stages.pretrain import run_pretrain
        run_pretrain(load_config(PretrainConfig, args.config, args.overrides), resume=args.resume)
    elif args.command == "finetune":
        from .stages.finetune import run_finetune
        overrides = args.overrides + ([f"init={args.init}"] if args.init else [])
        run_finetune(load_config(FinetuneConfig, args.config, overrides), resume=args.resume)
    elif args.command == "batchnorm-bank":
        from .stages.finetune import run_batchnorm_bank
        run_batchnorm_bank(args.model, load_config(FinetuneConfig, args.config, args.overrides), args.out,
                           only=args.points)
    elif args.command == "distill":
        from .configs import DistillConfig
        from .stages.distill import run_distill
        flags = {"teacher": args.teacher, "student.supertokens": args.supertokens,
                 "student.gate_lambda": args.gate_lambda}
        overrides = args.overrides + [f"{k}={v}" for k, v in flags.items() if v is not None]
        overrides += ["student.frozen_student=true"] * args.frozen_student + ["student.gate=true"] * args.gate
        run_distill(load_config(DistillConfig, args.config, overrides), resume=args.resume)
    elif args.command == "evaluate":
        from .stages.evaluate import run_evaluate, run_probe
        cfg = load_config(FinetuneConfig, args.config, args.overrides)
        if args.model:
            metrics = run_evaluate(args.model, cfg.data, cfg.run.seed)
            print(" ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
        else:
            from .configs import ProbeConfig
            scores = run_probe(args.backbone, cfg.data, ProbeConfig(), cfg.run.seed)
            print(" ".join(f"probe_{k}={v:.4g}" for k, v in scores.items()))
    elif args.command == "experiment":
        from .stages.experiment import ExperimentConfig, run_experiment
        run_experiment(load_config(ExperimentConfig, args.config, args.overrides), args.output)
    elif args.command == "distill-tables":
        from .stages.distill_tables import DistillTablesConfig, run_distill_tables
        run_distill_tables(load_config(DistillTablesConfig, args.config, args.overrides), args.output)
    elif args.command == "export":
        from .stages.export import run_export
        run_export(args.model, args.onnx, tensorrt=args.tensorrt, precision=args.precision, cache_dir=args.cache_dir,
                   max_points=args.max_points, min_centers=args.min_centers, max_centers=args.max_centers,
                   check=not args.no_check)
    elif args.command == "bench":
        import torch
        from .stages.bench import BenchConfig, run_bench
        cfg = load_config(BenchConfig, None, args.overrides)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        run_bench(cfg, args.output or f"docs/results/bench_{device}.json")
    elif args.command == "model-card":
        from .stages.model_card import run_model_card
        cfg = load_config(FinetuneConfig, args.config, args.overrides)
        run_model_card(args.model, cfg, args.out, ship=args.ship)
    elif args.command == "demo":
        from .stages.demo import run_demo
        run_demo(load_config(PretrainConfig, args.config, args.overrides))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
