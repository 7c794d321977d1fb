"""Table and plot of the pre-training trials (docs/results/pretrain_trials/*.json, scripts/pretrain_trials.py).

Writes summary.md (validation probe curve of every trial against its random-init baseline) and
curves.png next to the records. Validation data only; incomplete records are marked.
Usage: python scripts/pretrain_trials_summary.py [--results docs/results/pretrain_trials]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="docs/results/pretrain_trials")
    args = ap.parse_args()
    root = Path(args.results)
    trials = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    trials = [t for t in trials if "curve" in t]
    rows = ["| trial | complete | epochs probed | val probe (CV C) at those epochs | random init | best gain | "
            "val probe (C = 0.012) at those epochs | samples/s | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for t in trials:
        c, r = t["curve"], t["random_init"]
        best = max(c["val_probe_cv"][1:], default=float("nan")) - r["val_probe_cv"]
        rows.append(f"| {t['name']} | {t['complete']} | {', '.join(str(e) for e in c['epoch'])} | "
                    f"{' / '.join(f'{v:.1f}' for v in c['val_probe_cv'])} | "
                    f"{r['val_probe_cv']:.1f} | {best:+.1f} | {' / '.join(f'{v:.1f}' for v in c['val_probe_fixed_C'])} | "
                    f"{t['samples_per_s'] or float('nan'):.1f} | {t['train_time_s']:.0f} |")
    notes = "\n".join(f"- **{t['name']}**: {t['note']}" for t in trials if t.get("note"))
    (root / "summary.md").write_text(
        "Pre-training trials (issue 14): linear-probe accuracy (%) on the VALIDATION split carved from the "
        "training split; random init = mean over init seeds of the same model. Written by "
        "scripts/pretrain_trials_summary.py.\n\n" + "\n".join(rows) + "\n\n" + notes + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("val_probe_cv", "val_probe_fixed_C")):
        for i, t in enumerate(trials):
            color = f"C{i}"
            ax.plot(t["curve"]["epoch"], t["curve"][key], marker="o", color=color, label=t["name"])
            ax.axhline(t["random_init"][key], color=color, ls=":", lw=1)
        ax.set_xlabel("pre-training epoch"); ax.set_ylabel("validation probe accuracy (%)")
        ax.set_title(f"{key} (dotted: random init)"); ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(root / "curves.png", dpi=110); plt.close(fig)
    print((root / "summary.md").read_text())


if __name__ == "__main__":
    main()
