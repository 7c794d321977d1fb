"""Import-graph assertions: the layering of the code base (read from the sources, no imports run).

    models <- train <- stages        (and models <- runtime, runtime <- foundry_ros)
    runtime imports neither stages nor train; nothing in foundry_core imports ROS
    the subpackages of foundry_core import each other without cycles (sim does not import data)
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

from support import REPO_ROOT

ROS_MODULES = ("rclpy", "rosidl", "sensor_msgs", "std_msgs", "diagnostic_msgs", "foundry_msgs",
               "builtin_interfaces", "rcl_interfaces", "launch", "launch_ros", "ament_index_python")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def import_graph(package: str) -> dict[str, set[str]]:
    """module -> absolute names of everything it imports (module-level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        name = module_name(path)
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[:len(base) - node.level + 1]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        graph[name] = found
    return graph


def imports_of(prefix: str, package: str = "foundry_core") -> dict[str, set[str]]:
    return {m: deps for m, deps in import_graph(package).items() if m == prefix or m.startswith(prefix + ".")}


def offenders(prefix: str, forbidden: tuple[str, ...], package: str = "foundry_core") -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in imports_of(prefix, package).items() for d in deps
                  if any(d == f or d.startswith(f + ".") for f in forbidden))


def test_the_graph_is_read():
    graph = import_graph("foundry_core")
    assert "foundry_core.runtime.predictor" in graph
    assert "foundry_core.models.io" in graph["foundry_core.runtime.predictor"]
    assert "torch" in graph["foundry_core.models.encoder"]


def test_foundry_core_imports_no_ros():
    assert offenders("foundry_core", ROS_MODULES) == []


@pytest.mark.parametrize("layer, forbidden", [
    ("foundry_core.models", ("foundry_core.train", "foundry_core.stages", "foundry_core.runtime", "foundry_core.cli",
                             "foundry_core.data")),
    ("foundry_core.train", ("foundry_core.stages", "foundry_core.runtime", "foundry_core.cli")),
    ("foundry_core.runtime", ("foundry_core.stages", "foundry_core.train", "foundry_core.cli", "foundry_core.data")),
    ("foundry_core.sim", ("foundry_core.data", "foundry_core.models", "foundry_core.train", "foundry_core.stages",
                          "foundry_core.runtime")),
    ("foundry_core.data", ("foundry_core.models", "foundry_core.train", "foundry_core.stages", "foundry_core.runtime")),
    ("foundry_core.checkpoint", ("foundry_core.models", "foundry_core.train", "foundry_core.stages",
                                 "foundry_core.runtime")),
])
def test_layers_point_one_way(layer, forbidden):
    assert offenders(layer, forbidden) == []


def test_the_ros_node_uses_the_runtime_not_training():
    assert offenders("foundry_ros", ("foundry_core.stages", "foundry_core.train", "foundry_core.cli"),
                     package="foundry_ros") == []
    users = [m for m, deps in import_graph("foundry_ros").items() if "foundry_core.runtime.predictor" in deps]
    assert users, "the node builds its model through foundry_core.runtime.predictor"


def unit_of(module: str) -> str:
    """foundry_core.models.io -> foundry_core.models; top-level modules are their own unit."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_foundry_core_units_have_no_import_cycles():
    graph = import_graph("foundry_core")
    units = {unit_of(m) for m in graph}
    edges = {u: set() for u in units}
    for m, deps in graph.items():
        for d in deps:
            if d.startswith("foundry_core.") and unit_of(d) in units and unit_of(d) != unit_of(m):
                edges[unit_of(m)].add(unit_of(d))
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [u, v]))
            if v not in state:
                visit(v, path + [u])
        state[u] = 2

    for u in sorted(units):
        if u not in state:
            visit(u, [])


@pytest.mark.parametrize("package", ["foundry_core", "foundry_ros"])
def test_no_private_name_is_imported_from_another_module(package):
    bad = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                bad += [f"{module_name(path)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []
