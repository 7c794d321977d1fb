"""Stage `experiment`: does pre-training help? Linear probe and fine-tuning of the pre-trained
encoder vs the same encoder randomly initialised, over several seeds, on one fixed split."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..typed_yaml import to_dict
from ..configs import FinetuneConfig, PretrainConfig
from .common import write_json
from .evaluate import run_probe
from .finetune import run_finetune
from .pretrain import run_pretrain


@dataclass
class ExperimentConfig:
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1])      # probe / fine-tuning seeds
    pretrain_seeds: list[int] = field(default_factory=lambda: [0])  # seed i uses pretrain_seeds[i % len]
    out_dir: str = "runs/experiment"
    dataset_name: str = "infomr_2048"


def _mean_std(xs: list[float]) -> str:
    return f"{np.mean(xs):.2f} ± {np.std(xs):.2f}"


def run_experiment(cfg: ExperimentConfig, output: str | Path) -> dict:
    out = Path(cfg.out_dir)
    results: dict = {"probe_acc": {"pretrained": [], "random": []},
                     "probe_acc_fixed_C": {"pretrained": [], "random": []},
                     "finetune_acc": {"pretrained": [], "random": []}}
    chosen_C: dict = {"pretrained": [], "random": []}
    pretrain_times, runs = [], []
    backbones: dict[int, str] = {}
    for i, seed in enumerate(cfg.seeds):
        pseed = cfg.pretrain_seeds[i % len(cfg.pretrain_seeds)]
        pcfg = copy.deepcopy(cfg.pretrain)
        pcfg.run.seed, pcfg.run.out_dir = pseed, str(out / f"pretrain_s{pseed}")
        if pseed not in backbones:  # resumable: a finished run is only reloaded
            res = run_pretrain(pcfg, resume=True)
            backbones[pseed] = res["backbone"]
            pretrain_times.append(float(sum(h["epoch_time_s"] for h in res["history"])))
        backbone = backbones[pseed]
        for init, path in (("pretrained", backbone), ("random", None)):
            scores = run_probe(path, pcfg.data, pcfg.probe, seed, random_model=pcfg.model)
            results["probe_acc"][init].append(scores["cv"])
            results["probe_acc_fixed_C"][init].append(scores["fixed"])
            chosen_C[init].append(scores["cv_C"])
        for init in ("pretrained", "random"):
            fcfg = copy.deepcopy(cfg.finetune)
            fcfg.run.seed, fcfg.run.out_dir = seed, str(out / f"finetune_{init}_s{seed}")
            fcfg.init = backbone if init == "pretrained" else ""
            fcfg.model = copy.deepcopy(pcfg.model)
            res = run_finetune(fcfg, resume=True)
            results["finetune_acc"][init].append(res["final"]["test_acc"])
            runs.append(fcfg.run.out_dir)
        print(f"[experiment] seed {seed}: probe pretrained {results['probe_acc']['pretrained'][-1]:.2f} "
              f"random {results['probe_acc']['random'][-1]:.2f}; fine-tune pretrained "
              f"{results['finetune_acc']['pretrained'][-1]:.2f} random {results['finetune_acc']['random'][-1]:.2f}",
              flush=True)
    summary = {
        "dataset": cfg.dataset_name,
        "encoder": cfg.pretrain.model.encoder,
        "epochs": cfg.pretrain.optim.epochs,
        "finetune_epochs": cfg.finetune.optim.epochs,
        "wall_time_s": float(np.mean(pretrain_times)),   # training time of the pre-training epochs
        "seeds": cfg.seeds,
        "pretrain_seeds": cfg.pretrain_seeds,
        "pretrain_wall_time_s": pretrain_times,
        **results,
        "probe_protocol": (f"linear {cfg.pretrain.probe.classifier} on standardised max+mean pooled tokens; "
                           f"probe_acc: C chosen by 3-fold CV on the training split from {cfg.pretrain.probe.cv_grid}; "
                           f"probe_acc_fixed_C: C = {cfg.pretrain.probe.C} (the recipe)"),
        "probe_cv_C": chosen_C,
        "summary": {f"{k}_{init}": _mean_std(v) for k, d in results.items() for init, v in d.items()},
        "config": to_dict(cfg),
    }
    write_json(output, summary)
    plot_experiment(results, Path(output).with_suffix(".png"), cfg.dataset_name)
    Path(output).with_suffix(".md").write_text(markdown_table(summary))
    print(f"[experiment] wrote {output}: " + ", ".join(f"{k} {v}" for k, v in summary["summary"].items()))
    return summary


def markdown_table(summary: dict) -> str:
    """The experiment's numbers as a markdown table (mean ± std over seeds, then per seed)."""
    rows = ["| metric | pre-trained | random init | difference |", "|---|---|---|---|"]
    for key in ("probe_acc", "probe_acc_fixed_C", "finetune_acc"):
        pre, rnd = summary[key]["pretrained"], summary[key]["random"]
        diff = np.array(pre) - np.array(rnd)
        rows.append(f"| {key} | {_mean_std(pre)} ({', '.join(f'{v:.2f}' for v in pre)}) | "
                    f"{_mean_std(rnd)} ({', '.join(f'{v:.2f}' for v in rnd)}) | {diff.mean():+.2f} |")
    return (f"Dataset {summary['dataset']}, encoder {summary['encoder']}, {summary['epochs']} pre-training epochs "
            f"({summary['wall_time_s']:.0f} s), {summary['finetune_epochs']} fine-tuning epochs, seeds "
            f"{summary['seeds']}.\n\n" + "\n".join(rows) + "\n")


def plot_experiment(results: dict, path: Path, title: str) -> None:
    """Grouped bars (mean ± std over seeds): probe and fine-tune accuracy, pre-trained vs random."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    metrics = list(results)
    for j, init in enumerate(("pretrained", "random")):
        means = [np.mean(results[m][init]) for m in metrics]
        stds = [np.std(results[m][init]) for m in metrics]
        xs = np.arange(len(metrics)) + (j - 0.5) * 0.38
        bars = ax.bar(xs, means, 0.36, yerr=stds, capsize=4, label=init)
        ax.bar_label(bars, fmt="%.1f", padding=2)
    ax.set_xticks(np.arange(len(metrics)), [m.replace("_", " ") for m in metrics])
    ax.set_ylabel("test accuracy (%)"); ax.set_title(title); ax.legend(); ax.grid(axis="y", alpha=.3)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
