"""ROS 2 declaration and reading of the node's parameters (:data:`params.PARAM_SPECS`, rclpy).

Start-up values (``--params-file`` / ``-p``, rclpy's overrides) are checked against the specs before
anything is declared, so a wrong type or range fails with the rule's message (``deadline_ms must be
of type float, got 'fast'``) instead of rclpy's exception; an integer for a float parameter is taken
as that float, at start and at run time (:func:`ints_as_floats`, a pre-set callback). Every parameter
holds a value of its type after :func:`declare_parameters`: an empty string array is an empty
STRING_ARRAY, not rclpy's NOT_SET (a NOT_SET parameter makes the GetParameters service answer with
no values at all, so ``ros2 param dump`` prints nothing).
"""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.parameter import Parameter

from foundry_ros import params as P

__all__ = ["declare_parameters", "read_parameters", "descriptor", "declared_default", "ints_as_floats",
           "unknown_parameters"]

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


def ints_as_floats(parameters: list[Parameter]) -> list[Parameter]:
    """``parameters`` with every INTEGER value of a float spec as that DOUBLE (rclpy pre-set callback:
    ``ros2 param set /foundry deadline_ms 80`` is otherwise refused as the wrong type)."""
    out = []
    for p in parameters:
        spec = P.SPECS_BY_NAME.get(p.name)
        if spec is not None and spec.kind == "float" and p.type_ == Parameter.Type.INTEGER:
            p = Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
        out.append(p)
    return out


def _overrides(node: Any) -> dict[str, Parameter]:
    overrides = getattr(node, "_parameter_overrides", None)  # rclpy's, from --params-file / -p
    return overrides if isinstance(overrides, dict) else {}


def _check_overrides(overrides: dict[str, Parameter]) -> None:
    """ValueError with every problem of the start-up values given for specs (types, ranges, choices)."""
    given = {name: ov.value for name, ov in overrides.items() if name in P.SPECS_BY_NAME}
    errors = P.validate_params(given)
    if errors:
        raise ValueError("invalid foundry parameters: " + "; ".join(errors))


def _set_empty_array(node: Any, spec: P.ParamSpec) -> None:
    """Give the declared, still NOT_SET string array ``spec`` the value [] (typed STRING_ARRAY).

    rclpy's public API cannot: declare_parameter types [] as a byte array, and set_parameters refuses
    read-only parameters. This is the call declare_parameter itself makes (descriptors given: no
    read-only check), so callbacks and the parameter event behave as for a declaration."""
    param = Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])
    result = node._set_parameters_atomically_common([param], {spec.name: node.describe_parameter(spec.name)})
    if not result.successful:
        raise ValueError(f"{spec.name}: could not set an empty string array: {result.reason}")


def declare_parameters(node: Any) -> None:
    """Check the start-up values, then declare every spec on ``node`` (each with a value of its type)."""
    from rclpy.exceptions import ParameterUninitializedException

    overrides = _overrides(node)
    for spec in P.PARAM_SPECS:
        # ``deadline_ms: 100`` would make rclpy refuse to start; accept it as the float it means.
        ov = overrides.get(spec.name)
        if spec.kind == "float" and ov is not None and ov.type_ == Parameter.Type.INTEGER:
            overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(ov.value))
    _check_overrides(overrides)
    for spec in P.PARAM_SPECS:
        node.declare_parameter(spec.name, declared_default(spec), descriptor(spec))
        if spec.kind == "str[]":
            try:
                node.get_parameter(spec.name)
            except ParameterUninitializedException:  # declared by type, or `[]` in a params file
                _set_empty_array(node, spec)


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


def unknown_parameters(node: Any) -> list[str]:
    """Warnings for the start-up values given to ``node`` under names it does not declare (a typo in a
    params file or ``-p`` is otherwise ignored without a word); standard ROS names stay quiet."""
    overrides = _overrides(node)
    declared = [name for name in overrides if node.has_parameter(name)]
    return P.unknown_parameter_messages(overrides, known=declared)
