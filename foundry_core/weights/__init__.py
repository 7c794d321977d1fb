"""Weights shipped with the package (see docs/model_card.md and scripts/train_default_model.sh)."""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "default_sceneseg.safetensors"


def default_model_path() -> Path:
    """The shipped default scene segmentation student (Foundry-Gate, fp16)."""
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(f"the default model {DEFAULT_MODEL} is missing: reproduce it with "
                                "`bash scripts/train_default_model.sh`, or set model_path")
    return DEFAULT_MODEL
