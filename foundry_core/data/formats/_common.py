"""Shared helpers for the dataset loaders: path checks, errors naming the layout, label checks."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from foundry_core.data.shapeset import DatasetFormatError


def fail(fmt: str, layout: str, problem: str) -> DatasetFormatError:
    """One error whose message states the problem and the expected on-disk layout."""
    return DatasetFormatError(f"{fmt}: {problem}. Expected layout: {layout}")


@contextmanager
def reading(fmt: str, layout: str, path: Path | str) -> Iterator[None]:
    """Turn any error raised while reading `path` into a DatasetFormatError naming the layout."""
    try:
        yield
    except DatasetFormatError:
        raise
    except Exception as exc:  # unreadable / truncated / garbage file
        lines = str(exc).strip().splitlines()
        detail = lines[0][:300] if lines else ""
        raise fail(fmt, layout, f"cannot read {path} ({type(exc).__name__}: {detail})") from exc


def check_split(fmt: str, split: str, allowed: Sequence[str]) -> str:
    """Validate a split name (a caller error, hence ValueError)."""
    if split not in allowed:
        raise ValueError(f"{fmt}: unknown split {split!r}; valid splits: {', '.join(allowed)}")
    return split


def require_dir(path: Path, fmt: str, layout: str, what: str = "directory") -> Path:
    if not path.is_dir():
        raise fail(fmt, layout, f"missing {what} {path}")
    return path


def require_file(path: Path, fmt: str, layout: str, what: str = "file") -> Path:
    if not path.is_file():
        raise fail(fmt, layout, f"missing {what} {path}")
    return path


def read_lines(path: Path, fmt: str, layout: str) -> list[str]:
    """Non-empty stripped lines of a text file."""
    require_file(path, fmt, layout)
    with reading(fmt, layout, path):
        text = path.read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def natural_key(name: str | Path) -> list:
    """Sort key so that 'a2' < 'a10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def as_labels(values: np.ndarray, num_classes: int | None, fmt: str, layout: str, where: str) -> np.ndarray:
    """(M,) int64 labels; integral values in [0, num_classes) (upper bound skipped when None)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
        raise fail(fmt, layout, f"{where}: labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise fail(fmt, layout, f"{where}: label {arr.min()} out of range (negative)")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise fail(fmt, layout, f"{where}: label {arr.max()} out of range for {num_classes} classes")
    return arr


def as_cloud(arr: np.ndarray, fmt: str, layout: str, where: str, min_channels: int = 3) -> np.ndarray:
    """(N, C>=min_channels) float32 contiguous array."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < min_channels or arr.dtype.kind not in "fiu":
        raise fail(fmt, layout, f"{where}: expected a numeric (N, >={min_channels}) point array, "
                                f"got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def default_class_names(n: int) -> list[str]:
    return [f"class_{i}" for i in range(n)]
