"""Stage `distill-tables`: the paper's distillation tables (Tables 1, 2, 4, 5, Fig. 2) at CPU scale.

One command runs everything, resumable (finished runs and scored methods are reloaded):
  1. the teacher (Point-JEPA pre-training) and, for the specialist, a teacher task model fine-tuned
     on the specialist's task (both reused when their run directories are complete);
  2. per seed, the distillations: Foundry s in `supertokens` (trainable), s = `reduced_tokens` frozen,
     Foundry-Gate, ToMe trained with FMD, and the specialist (KL on the task model's logits);
  3. per seed, every method on every task with the backbone frozen: inference-only baselines
     (teacher, random token sampling, ToMe, K-Means prototypes) next to the distilled students;
     classification by a linear probe on pooled tokens, segmentation by a per-point probe
     (`foundry_core.train.seg_probe`), on the same tokens for every method (seeded FPS);
  4. docs/results/distill.json ({"methods": {NAME: {TASK: [per-seed %]}}, plus tokens in the
     encoder, distillation loss, thresholds and the targets), a markdown table and two plots.

Every method sees the same c tokens of a cloud (the teacher's tokenizer, frozen in every student)
unless its tokenizer differs (the specialist's comes from the fine-tuned task model); its output
tokens are always mapped back to the c slots, so the probes are identical for all methods.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..typed_yaml import ConfigError, to_dict
from ..configs import DataConfig, DistillConfig, FinetuneConfig, PretrainConfig, ProbeConfig
from ..data.sources import make_datasets
from ..models.backbone import pooled_features
from ..models.io import load_backbone
from ..models.tokenizer import PointTokenizer
from ..train.probe import fit_linear_probe, select_C
from ..train.seg_probe import PointGeometry, SegProbeConfig, fit_seg_probe, point_geometry
from .common import eval_view, student_for, write_json
from .distill import run_distill
from .finetune import run_finetune
from .pretrain import run_pretrain



def table_methods(cfg: "DistillTablesConfig") -> set[str]:
    """Names of docs/results/distill.json "methods" (the issue's schema, e.g. foundry_s16_frozen,
    random16, gate_budget_32); gate thresholds and FMD-trained ToMe are reported beside them."""
    red = cfg.reduced_tokens
    return {"teacher", "specialist", *(f"foundry_s{s}" for s in cfg.supertokens), f"foundry_s{red}_frozen",
            f"random{red}", f"tome{red}", f"kmeans{red}", *(f"gate_budget_{b}" for b in cfg.gate_budgets)}


@dataclass
class TaskSpec:
    """A downstream task scored on frozen features."""

    name: str                                   # e.g. infomr_cls, mosd_seg, parts_seg
    kind: Literal["cls", "seg"] = "cls"
    data: DataConfig = field(default_factory=DataConfig)
    num_groups: int = 0                         # tokens per cloud (0: the teacher's)
    metric: Literal["acc", "miou", "instance_miou"] = "acc"


@dataclass
class DistillTablesConfig:
    teacher: PretrainConfig = field(default_factory=PretrainConfig)     # run (or reused) first
    specialist_task: FinetuneConfig = field(default_factory=FinetuneConfig)  # the specialist's teacher task model
    distill: DistillConfig = field(default_factory=DistillConfig)       # data / optim / run of every distillation
    tasks: list[TaskSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    supertokens: list[int] = field(default_factory=lambda: [1, 4, 16])
    reduced_tokens: int = 16                    # random / ToMe / K-Means / frozen / gate / specialist size
    gate_budgets: list[int] = field(default_factory=lambda: [16, 32, 48])
    gate_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    # thresholds r set from the TRAINING split: r = the (1 - f) quantile of the gate's pi over the first
    # task's training tokens, so that a fraction f of them is merged (rows gate_merge{100 f})
    gate_merge_fractions: list[float] = field(default_factory=list)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seg_probe: SegProbeConfig = field(default_factory=SegProbeConfig)
    batch_size: int = 32                        # feature extraction
    out_dir: str = "runs/distill_tables"

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("distill-tables needs at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        if len(self.seeds) < 1:
            raise ConfigError("distill-tables needs at least one seed")
        if any(not 0.0 < f < 1.0 for f in self.gate_merge_fractions):
            raise ConfigError(f"gate_merge_fractions must lie in (0, 1), got {self.gate_merge_fractions}")


# ----------------------------------------------------------------------------- cached task tokens
@dataclass
class TaskCache:
    """The tokens of every cloud of a task's train and test splits (one seeded tokenization)."""

    spec: TaskSpec
    tokens: dict[str, list]                     # split -> [Tokens] per batch
    labels: dict[str, torch.Tensor]             # split -> (M,) cloud labels
    geometry: dict[str, PointGeometry]          # seg tasks: split -> interpolation tables + point labels
    num_classes: int
    tokenizer_state: dict                       # which tokenizer made these tokens


def _same_tokenizer(a: PointTokenizer, state: dict) -> bool:
    mine = a.state_dict()      # a student tokenizer of its own has other tensors altogether
    return mine.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in mine.items())


@torch.no_grad()
def tokenize_task(spec: TaskSpec, tokenizer: PointTokenizer, seed: int, batch_size: int) -> TaskCache:
    train_set, test_set = make_datasets(spec.data, seed=spec.data.split_seed)
    gen = torch.Generator().manual_seed(seed)
    tokens, labels, geometry = {}, {}, {}
    for split, ds in (("train", eval_view(train_set)), ("test", eval_view(test_set))):
        toks, labs, centers, points, segs = [], [], [], [], []
        for i in range(0, len(ds), batch_size):
            items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
            pts = torch.stack([it["points"] for it in items])
            tok = tokenizer(pts, num_groups=spec.num_groups or None, generator=gen)
            toks.append(tok)
            labs.append(torch.stack([it["label"] for it in items]))
            if spec.kind == "seg":
                centers.append(tok.centers)
                points.append(pts[..., :3])
                segs.append(torch.stack([it["seg"] for it in items]))
        tokens[split], labels[split] = toks, torch.cat(labs)
        if spec.kind == "seg":
            allowed = None
            shapes = ds.shapes
            if spec.metric == "instance_miou" and shapes.category_of_seg is not None:
                cos = torch.as_tensor(np.asarray(shapes.category_of_seg))
                allowed = cos[None, :] == labels[split][:, None]
            geometry[split] = point_geometry(torch.cat(centers), torch.cat(points), torch.cat(segs), allowed)
    shapes = train_set.shapes
    k = len(shapes.seg_classes) if spec.kind == "seg" else shapes.num_classes
    return TaskCache(spec, tokens, labels, geometry, k, copy.deepcopy(tokenizer.state_dict()))


@torch.no_grad()
def encode_cached(backbone, cache: TaskCache, split: str, budget: int | None = None,
                  threshold: float | None = None, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Output tokens (M, c, D) of a backbone on cached tokens, and the mean tokens entering its encoder."""
    backbone.eval()
    torch.manual_seed(seed)                     # random token sampling draws from the global generator
    outs, n_tok = [], []
    kw = {k: v for k, v in (("budget", budget), ("fusion_threshold", threshold)) if v is not None}
    for tok in cache.tokens[split]:
        out = backbone.encode(tok, **kw)
        outs.append(out.last.float())
        t = getattr(out, "tokens_in_encoder", None)
        n_tok.append(t.float() if t is not None else torch.full((out.last.shape[0],), float(out.last.shape[1])))
    return torch.cat(outs), float(torch.cat(n_tok).mean())


@torch.no_grad()
def merge_thresholds(student, cache: TaskCache, fractions: list[float]) -> dict[float, float]:
    """Fusion thresholds r that merge a fraction f of a gated student's tokens on a task's TRAINING
    split: r_f = the (1 - f) quantile of pi over every training token."""
    student.eval()
    probs = torch.cat([student.gate.probs(student.token_proj(tok.tokens)).flatten()
                       for tok in cache.tokens["train"]])
    return {f: float(torch.quantile(probs.double(), 1.0 - f)) for f in fractions}


# ----------------------------------------------------------------------------- the stage
class DistillTables:
    def __init__(self, cfg: DistillTablesConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)

    def log(self, msg: str) -> None:
        print(f"[distill-tables] {msg}", flush=True)

    # -- training runs (each resumable, finished runs are reloaded)
    def teacher_path(self) -> str:
        return run_pretrain(self.cfg.teacher, resume=True)["backbone"]

    def task_model_path(self, teacher: str) -> str:
        fcfg = copy.deepcopy(self.cfg.specialist_task)
        fcfg.init = teacher
        return str(Path(run_finetune(fcfg, resume=True)["out_dir"]) / "model.safetensors")

    def distill_runs(self, teacher: str, task_model: str, seed: int) -> dict[str, str]:
        s_red = self.cfg.reduced_tokens
        specs = {f"foundry_s{s}": {"student.supertokens": s} for s in self.cfg.supertokens}
        specs[f"foundry_s{s_red}_frozen"] = {"student.supertokens": s_red, "student.frozen_student": True}
        specs[f"gate_s{s_red}"] = {"student.supertokens": s_red, "student.gate": True}
        specs[f"tome{s_red}_fmd"] = {"student.supertokens": s_red, "student.kind": "tome"}
        specs["specialist"] = {"student.supertokens": s_red, "loss": "kl", "teacher": task_model}
        paths = {}
        for name, changes in specs.items():
            dcfg = copy.deepcopy(self.cfg.distill)
            dcfg.teacher, dcfg.run.seed = teacher, seed
            dcfg.run.out_dir = str(self.out / f"{name}_seed{seed}")
            for key, value in changes.items():
                obj, attr = (dcfg.student, key.split(".")[1]) if key.startswith("student.") else (dcfg, key)
                setattr(obj, attr, value)
            path = Path(dcfg.run.out_dir) / "student.safetensors"
            if not path.is_file():
                self.log(f"seed {seed}: distilling {name}")
                t0 = time.time()
                run_distill(dcfg, resume=True)
                self.log(f"seed {seed}: {name} distilled in {time.time() - t0:.0f} s")
            paths[name] = str(path)
        return paths

    # -- scoring
    def score(self, backbone, caches: dict[str, TaskCache], ref: dict, seed: int, budget: int | None = None,
              threshold: float | None = None) -> dict:
        """Scores (%) of one frozen backbone on every task, its tokens in the encoder and its
        distillation loss (Smooth L1 to the teacher's tokens on the first task's test clouds).
        ref holds the probe C per cls task and the teacher's test tokens ("last"); the first backbone
        scored (the teacher) fills what is missing, so nothing is encoded twice."""
        row: dict = {"scores": {}, "tokens_in_encoder": {}}
        for name, cache in self._caches_for(backbone, caches, seed).items():
            spec = cache.spec
            tr, _ = encode_cached(backbone, cache, "train", budget, threshold, seed)
            te, n_tok = encode_cached(backbone, cache, "test", budget, threshold, seed)
            row["tokens_in_encoder"][name] = n_tok
            if spec.kind == "cls":
                fx = lambda x: pooled_features(x).numpy()         # noqa: E731
                if name not in ref["C"]:
                    ref["C"][name] = select_C(fx(tr), cache.labels["train"].numpy(), self.cfg.probe, seed=seed)
                row["scores"][name] = fit_linear_probe(fx(tr), cache.labels["train"].numpy(), fx(te),
                                                       cache.labels["test"].numpy(), self.cfg.probe,
                                                       C=ref["C"][name])
            else:
                res = fit_seg_probe(tr, cache.geometry["train"], te, cache.geometry["test"], cache.num_classes,
                                    self.cfg.seg_probe, seed=seed)
                row["scores"][name] = res["instance_miou" if spec.metric == "instance_miou" else "miou"]
            if name == self.cfg.tasks[0].name:
                ref.setdefault("last", te)
                if te.shape == ref["last"].shape:
                    row["distill_loss"] = float(F.smooth_l1_loss(te, ref["last"]))
        return row

    def _caches_for(self, backbone, caches: dict[str, TaskCache], seed: int) -> dict[str, TaskCache]:
        """The shared caches, re-tokenized with the backbone's own tokenizer where it differs."""
        out = {}
        for name, cache in caches.items():
            if _same_tokenizer(backbone.tokenizer, cache.tokenizer_state):
                out[name] = cache
            else:
                out[name] = tokenize_task(cache.spec, backbone.tokenizer.eval(), seed, self.cfg.batch_size)
        return out

    def run(self, output: str | Path) -> dict:
        cfg = self.cfg
        teacher_path = self.teacher_path()
        task_model = self.task_model_path(teacher_path)
        self.log(f"teacher {teacher_path}; specialist's task model {task_model}")
        teacher = load_backbone(teacher_path).eval()
        per_seed = {}
        for seed in cfg.seeds:
            per_seed[seed] = self.run_seed(seed, teacher, teacher_path, task_model)
        summary = aggregate(cfg, per_seed, teacher_path, task_model)
        write_json(output, summary)
        write_markdown(summary, Path(output).with_suffix(".md"))
        plot(summary, Path(output).with_suffix(".png"))
        self.log(f"wrote {output} (+ .md, .png)")
        return summary

    def run_seed(self, seed: int, teacher, teacher_path: str, task_model: str) -> dict:
        cfg = self.cfg
        scores_path = self.out / f"scores_seed{seed}.json"
        done = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
        paths = self.distill_runs(teacher_path, task_model, seed)
        t0 = time.time()
        caches = {t.name: tokenize_task(t, teacher.tokenizer, seed, cfg.batch_size) for t in cfg.tasks}
        self.log(f"seed {seed}: tokenized {len(caches)} tasks in {time.time() - t0:.0f} s")
        # the teacher is scored first: it sets the probe C of every cls task and the reference tokens
        ref: dict = {"C": done.pop("_probe_C", {})}
        cls_tasks = {t.name for t in cfg.tasks if t.kind == "cls"}
        if not cls_tasks <= set(ref["C"]):
            done.pop("teacher", None)
            ref["C"] = {}
        s_red = cfg.reduced_tokens
        jobs: list[tuple[str, Callable, dict, str | None]] = [("teacher", lambda: teacher, {}, None)]
        for kind, name in (("random", f"random{s_red}"), ("tome", f"tome{s_red}"), ("kmeans", f"kmeans{s_red}")):
            def make(kind=kind):
                dcfg = copy.deepcopy(cfg.distill)
                dcfg.student.kind, dcfg.student.supertokens, dcfg.run.seed = kind, s_red, seed
                torch.manual_seed(seed)
                train_set = make_datasets(cfg.distill.data, seed)[0] if kind == "kmeans" else None
                return student_for(dcfg.student, teacher, train_set)
            jobs.append((name, make, {}, None))
        loaded: dict[str, torch.nn.Module] = {}         # one load per checkpoint (a gate serves many rows)
        for name, path in paths.items():
            def load(p=path):
                if p not in loaded:
                    loaded[p] = load_backbone(p)
                return loaded[p]
            if name.startswith("gate_"):
                jobs += [(f"gate_budget_{b}", load, {"budget": b}, path) for b in cfg.gate_budgets]
                jobs += [(f"gate_r{r:g}", load, {"threshold": r}, path) for r in cfg.gate_thresholds]
                merge_names = {f: f"gate_merge{round(100 * f)}" for f in cfg.gate_merge_fractions}
                if any(n not in done for n in merge_names.values()):
                    r_of = merge_thresholds(load(), caches[cfg.tasks[0].name], cfg.gate_merge_fractions)
                    jobs += [(n, load, {"threshold": r_of[f]}, path) for f, n in merge_names.items()]
            else:
                jobs.append((name, load, {}, path))
        first = cfg.tasks[0].name
        if "teacher" in done and any(name not in done for name, *_ in jobs):   # resumed: only its test tokens
            ref["last"] = encode_cached(teacher, caches[first], "test", seed=seed)[0]
        for name, make, kw, path in jobs:
            if name in done:
                continue
            t0 = time.time()
            row = self.score(make(), caches, ref, seed, **kw)
            row["val_distill_loss"] = _val_loss(path)
            if "threshold" in kw:
                row["threshold"] = kw["threshold"]
            done[name] = row
            write_json(scores_path, {**done, "_probe_C": ref["C"]})
            sc = "  ".join(f"{k} {v:.2f}" for k, v in row["scores"].items())
            self.log(f"seed {seed}: {name:<20s} {sc}  tokens {row['tokens_in_encoder'][cfg.tasks[0].name]:.1f} "
                     f"({time.time() - t0:.0f} s)")
        done["_probe_C"] = ref["C"]
        write_json(scores_path, done)
        return done


def _val_loss(path: str | None) -> float | None:
    """Validation distillation loss recorded by a distillation run (None for inference-only methods)."""
    if not path:
        return None
    metrics = Path(path).parent / "metrics.json"
    if not metrics.is_file():
        return None
    hist = json.loads(metrics.read_text())          # the trainer's history: a list of epoch rows
    vals = [h["val_distill_loss"] for h in hist if "val_distill_loss" in h]
    return float(vals[-1]) if vals else None


# ----------------------------------------------------------------------------- summary, table, plots
def aggregate(cfg: DistillTablesConfig, per_seed: dict[int, dict], teacher: str, task_model: str) -> dict:
    names = [n for n in per_seed[cfg.seeds[0]] if not n.startswith("_")]
    tasks = [t.name for t in cfg.tasks]

    def collect(name: str, key: str) -> dict:
        return {t: [per_seed[s][name][key][t] for s in cfg.seeds if t in per_seed[s][name][key]] for t in tasks}

    methods, extra, thresholds = {}, {}, {}
    in_table = table_methods(cfg)
    for n in names:
        (methods if n in in_table else
         thresholds if n.startswith(("gate_r", "gate_merge")) else extra)[n] = collect(n, "scores")
    summary = {
        "methods": methods,
        "gate_thresholds": thresholds,
        "fusion_threshold_r": {n: [per_seed[s][n].get("threshold") for s in cfg.seeds] for n in thresholds},
        "additional_methods": extra,
        "tokens_in_encoder": {n: collect(n, "tokens_in_encoder") for n in names},
        "distill_loss_to_teacher": {n: [per_seed[s][n].get("distill_loss") for s in cfg.seeds] for n in names},
        "val_distill_loss": {n: [per_seed[s][n].get("val_distill_loss") for s in cfg.seeds] for n in names},
        "seeds": cfg.seeds,
        "tasks": {t.name: {"kind": t.kind, "metric": t.metric, "source": t.data.source, "root": t.data.root,
                           "num_points": t.data.num_points, "num_groups": t.num_groups or cfg.teacher.model.num_groups}
                  for t in cfg.tasks},
        "teacher": teacher,
        "specialist_task_model": task_model,
        "distill": {"data": to_dict(cfg.distill.data), "optim": to_dict(cfg.distill.optim)},
        "probe_C": {s: per_seed[s].get("_probe_C") for s in cfg.seeds},
        "protocol": ("backbones frozen; classification: linear SVM on standardised max+mean pooled output tokens, "
                     "C chosen per seed by 3-fold CV on the teacher's training features and used for every method; "
                     "segmentation: per-point MLP probe (hidden %d, %d epochs) on output tokens interpolated to the "
                     "points (3-NN) + pooled token; every method on the same seeded tokens, outputs in the c slots"
                     % (cfg.seg_probe.hidden, cfg.seg_probe.epochs)),
    }
    summary["targets"] = targets(summary, cfg)
    return summary


def _mean(xs: list) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def targets(summary: dict, cfg: DistillTablesConfig) -> dict:
    """The issue's targets, measured: retention at s = 4 and the margin at 16 tokens."""
    m, out = summary["methods"], {}
    s_red = cfg.reduced_tokens
    for task in summary["tasks"]:
        t = _mean(m.get("teacher", {}).get(task, []))
        row = {}
        if "foundry_s4" in m:
            row["retention_s4_pct_of_teacher"] = 100.0 * _mean(m["foundry_s4"][task]) / t if t else float("nan")
        if f"foundry_s{s_red}" in m:
            for base in (f"random{s_red}", f"tome{s_red}"):
                if base in m:
                    row[f"foundry_s{s_red}_minus_{base}"] = _mean(m[f"foundry_s{s_red}"][task]) - _mean(m[base][task])
        out[task] = row
    return out


def _fmt(xs: list, digits: int = 2) -> str:
    xs = [x for x in xs if x is not None]
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if xs else "–"


def write_markdown(summary: dict, path: Path) -> None:
    tasks = list(summary["tasks"])
    first = tasks[0]
    lines = ["| method | tokens in encoder | " + " | ".join(tasks) + " | distill loss to teacher |",
             "|---" * (len(tasks) + 3) + "|"]
    for group in ("methods", "gate_thresholds", "additional_methods"):
        for name, scores in summary[group].items():
            tok = _mean(summary["tokens_in_encoder"][name][first])
            r = summary["fusion_threshold_r"].get(name, [None]) if group == "gate_thresholds" else [None]
            label = name if r[0] is None else f"{name} (r = {_fmt(r, 3)})"
            lines.append(f"| {label} | {tok:.1f} | " + " | ".join(_fmt(scores.get(t, [])) for t in tasks)
                         + f" | {_fmt(summary['distill_loss_to_teacher'][name], 4)} |")
    lines += ["", "Targets (measured):", ""]
    for task, row in summary["targets"].items():
        lines.append(f"- {task}: " + ", ".join(f"{k} = {v:.2f}" for k, v in row.items()))
    lines += ["", f"Protocol: {summary['protocol']}.", f"Seeds: {summary['seeds']}."]
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    """Accuracy vs tokens entering the encoder (one panel per task) and distillation loss vs accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 8.5), squeeze=False)
    groups = {**summary["methods"], **summary["gate_thresholds"], **summary["additional_methods"]}
    for j, task in enumerate(tasks):
        ax, ax2 = axes[0, j], axes[1, j]
        for name, scores in groups.items():
            y = _mean(scores.get(task, []))
            x = _mean(summary["tokens_in_encoder"][name].get(task, []))
            style = ("s", "C0") if name.startswith("foundry") else ("^", "C2") if name.startswith("gate") else \
                    ("*", "k") if name == "teacher" else ("o", "C3")
            ax.scatter(x, y, marker=style[0], color=style[1])
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            loss = _mean(summary["distill_loss_to_teacher"][name])
            if np.isfinite(loss):
                ax2.scatter(loss, y, marker=style[0], color=style[1])
                ax2.annotate(name, (loss, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        metric = summary["tasks"][task]["metric"]
        ax.set(title=f"{task}: {metric} vs tokens in the encoder", xlabel="tokens entering the encoder",
               ylabel=f"{metric} (%)", xscale="log")
        ax2.set(title=f"{task}: distillation loss vs {metric}", xlabel="Smooth L1 to the teacher's tokens",
                ylabel=f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"Foundry distillation at CPU scale (mean of seeds {summary['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_distill_tables(cfg: DistillTablesConfig, output: str | Path) -> dict:
    return DistillTables(cfg).run(output)
