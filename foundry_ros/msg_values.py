"""Message field helpers: Kilted messages do not check fields unless asked, so clip and set here."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["UINT32_MAX", "u32", "f32", "fill_message"]

UINT32_MAX = 2**32 - 1


def u32(value: Any) -> int:
    """``value`` as an int clipped into [0, 2**32 - 1]; 0 when it is not a number."""
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(v, 0), UINT32_MAX)


def f32(value: Any) -> float:
    """``value`` as a float; NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fill_message(msg_cls: type, **fields: Any) -> Any:
    """``msg_cls()`` with ``fields`` set one by one (an unknown name raises AttributeError, where
    the generated constructor would silently ignore it)."""
    msg = msg_cls()
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg
