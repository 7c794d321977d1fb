"""ROS 2 declaration and reading of the node's parameters (:data:`params.PARAM_SPECS`, rclpy)."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.parameter import Parameter

from foundry_ros import params as P

__all__ = ["declare_parameters", "read_parameters", "descriptor", "declared_default"]

_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
          "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
          "str[]": ParameterType.PARAMETER_STRING_ARRAY}


def declared_default(spec: P.ParamSpec) -> Any:
    """The value to declare ``spec`` with (an empty string array as its type: rclpy types [] as bytes)."""
    if spec.kind == "str[]" and not spec.default:
        return Parameter.Type.STRING_ARRAY
    return list(spec.default) if isinstance(spec.default, list) else spec.default


def descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor of ``spec``: type, description, read-only flag, constraints and range."""
    d = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind], description=spec.description,
                            read_only=spec.read_only, additional_constraints=spec.constraints)
    if spec.lo is not None and spec.hi is not None:
        if spec.kind == "int":
            d.integer_range = [IntegerRange(from_value=int(spec.lo), to_value=int(spec.hi), step=1)]
        elif spec.kind == "float":
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.lo), to_value=float(spec.hi),
                                                         step=0.0)]
    return d


def declare_parameters(node: Any) -> None:
    """Declare every spec on ``node``; an integer override of a float parameter becomes that float."""
    overrides = getattr(node, "_parameter_overrides", None)  # rclpy's, from --params-file / -p
    for spec in P.PARAM_SPECS:
        # ``deadline_ms: 100`` would make rclpy refuse to start; accept it as the float it means.
        if spec.kind == "float" and isinstance(overrides, dict) and spec.name in overrides:
            ov = overrides[spec.name]
            if ov.type_ == Parameter.Type.INTEGER:
                overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(ov.value))
        node.declare_parameter(spec.name, declared_default(spec), descriptor(spec))


def read_parameters(node: Any) -> dict[str, Any]:
    """name -> coerced value of every spec (a typed parameter with no value, ``[]`` in a file, is [])."""
    from rclpy.exceptions import ParameterUninitializedException

    out = {}
    for spec in P.PARAM_SPECS:
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            value = None
        out[spec.name] = P.coerce_value(spec, value)
    return out
