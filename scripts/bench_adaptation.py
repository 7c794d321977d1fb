#!/usr/bin/env python3
"""Adaptation benchmark (foundry_ros/bench_adaptation.py): the demo's scenarios steady, deadline-step and
cpu-hog plus a dense sweep replay, --runs times each, medians in docs/results/adaptation.json (+ .png).

    .venv/bin/python scripts/bench_adaptation.py [--duration S] [--runs 3] [--out docs/results/adaptation.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry_ros.bench_adaptation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
