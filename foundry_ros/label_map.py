"""LabelMap entries from a predictor's ``label_info()`` (pure)."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from foundry_ros.msg_values import u32

__all__ = ["LabelRow", "label_rows"]


class LabelRow(NamedTuple):
    """One foundry_msgs/LabelEntry: id, name and RGBA colour."""

    id: int
    name: str
    rgba: tuple[float, float, float, float]


def label_rows(infos: Iterable[Any]) -> tuple[list[LabelRow], list[str]]:
    """Rows sorted by id (colours padded with 1.0 to RGBA) and warnings for the labels left out (id < 0)."""
    rows, warnings = [], []
    for info in sorted(infos, key=lambda i: int(i.id)):
        if int(info.id) < 0:
            warnings.append(f"label {info.name!r} has negative id {info.id}: left out of the map")
            continue
        r, g, b, a = (list(info.color) + [1.0] * 4)[:4]
        rows.append(LabelRow(u32(info.id), str(info.name), (float(r), float(g), float(b), float(a))))
    return rows, warnings
