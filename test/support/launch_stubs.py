"""Run launch/foundry.launch.py against minimal stand-ins of launch / launch_ros (not installable here)."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Mapping

from support import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / "launch" / "foundry.launch.py"


class LaunchConfiguration:
    """Stand-in of launch.substitutions.LaunchConfiguration: ``perform(context)`` is ``context[name]``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: Mapping[str, str]) -> str:
        return context[self.name]


def _record(kind: str):
    return lambda *a, **kw: (kind, a, kw)


def run_launch_file(tmp_path: Path, monkeypatch: Any, args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Evaluate the launch file with stubs; return ``declared`` (argument -> default value), ``node``
    (the keyword arguments of launch_ros.actions.Node), ``context`` (the argument values it was built
    with: ``args`` over the declared defaults) and ``config`` (the default parameters file)."""
    config = tmp_path / "share" / "foundry_ros" / "config" / "foundry.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("foundry: {ros__parameters: {}}\n")
    stubs = {
        "launch": types.SimpleNamespace(LaunchDescription=list),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=_record("arg"), OpaqueFunction=_record("opaque")),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(), "launch_ros.actions": types.SimpleNamespace(Node=_record("node"),
                                                                            LifecycleNode=_record("lifecycle_node")),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: str(tmp_path / "share" / pkg)),
    }
    for name, mod in stubs.items():
        monkeypatch.setitem(sys.modules, name, mod)
    ns: dict = {"__name__": "foundry_launch"}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), ns)
    entries = ns["generate_launch_description"]()
    declared = {e[1][0]: e[2]["default_value"] for e in entries if e[0] == "arg"}
    context = {**declared, **(args or {})}
    [opaque] = [e for e in entries if e[0] == "opaque"]
    [(kind, _, node)] = opaque[2]["function"](context)
    assert kind in ("node", "lifecycle_node")
    return {"declared": declared, "node": node, "kind": kind, "context": context, "config": str(config)}
