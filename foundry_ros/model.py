"""The node's view of its predictor: the default factory, what it reads of it, the channel check."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

__all__ = ["PredictorFactory", "default_predictor_factory", "ModelInfo", "check_channels"]

#: ``factory(model_path, device, precision, backend) -> predictor`` (see foundry_core.runtime.types).
PredictorFactory = Callable[[str, str, str, str], Any]


def default_predictor_factory(model_path: str, device: str, precision: str, backend: str = "auto") -> Any:
    """``Predictor.from_checkpoint(model_path, device=..., backend=..., [precision=...])``, imported lazily."""
    if not model_path:
        from foundry_core.weights import default_model_path
        model_path = str(default_model_path())          # the shipped default (raises with a fix if missing)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model_path {model_path!r} does not exist")
    from foundry_core.runtime.predictor import Predictor  # heavy (torch): only when actually used

    overrides: dict[str, Any] = {"device": device, "backend": backend}
    if precision and precision != "auto":
        overrides["precision"] = precision
    return Predictor.from_checkpoint(model_path, **overrides)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Predictor attributes the node reports and clamps its budget with."""

    backend: str = "unknown"
    precision: str = "unknown"
    model_hash: str = ""
    min_budget: int | None = None
    max_budget: int | None = None
    in_channels: int | None = None
    operating_points: tuple[Any, ...] = ()
    """The model's operating points (foundry_core.configs.OperatingPoint), cheapest first; empty: the
    predictor has none (or predates them) and the node steers the token budget instead."""

    @classmethod
    def of(cls, predictor: Any) -> ModelInfo:
        """Read from any predictor; missing attributes keep their defaults."""
        return cls(backend=str(getattr(predictor, "backend", "unknown")),
                   precision=str(getattr(predictor, "precision", "unknown")),
                   model_hash=str(getattr(predictor, "model_hash", "")),
                   min_budget=getattr(predictor, "min_budget", None),
                   max_budget=getattr(predictor, "max_budget", None),
                   in_channels=getattr(predictor, "in_channels", None),
                   operating_points=tuple(getattr(predictor, "operating_points", None) or ()))

    @property
    def point_names(self) -> tuple[str, ...]:
        """Names of :attr:`operating_points`, in their order."""
        return tuple(op.name for op in self.operating_points)

    def point(self, name: str) -> Any:
        """The operating point called ``name`` (KeyError if the model has none of that name)."""
        for op in self.operating_points:
            if op.name == name:
                return op
        raise KeyError(name)


def check_channels(in_channels: int | None, extra_fields: Sequence[str]) -> str | None:
    """ValueError when xyz + ``extra_fields`` gives the model fewer channels than it needs; a warning
    text when it gives more (they are ignored); None when they match or the model does not say."""
    if in_channels is None:
        return None
    need, have = int(in_channels), 3 + len(extra_fields)
    if need > have:
        raise ValueError(f"the model needs {need} input channels (xyz + {need - 3}), extra_fields "
                         f"{list(extra_fields)} gives {have}: list the missing PointCloud2 fields in extra_fields")
    if need < have:
        return (f"extra_fields {list(extra_fields)} gives {have} channels, the model uses {need}: "
                f"the extra ones are ignored")
    return None
