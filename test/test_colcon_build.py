"""`colcon build` in a workspace with this repository in src/: one package, foundry_ros, with the messages.

A copy of the repository goes to <tmp>/ws/src/foundry_ros and is built by colcon (pins of
requirements-colcon.txt, in build/colcon-venv/, never in the project venv) against the project venv's
ROS 2 wheels. Then, in the environment of install/setup.bash: the console scripts are where `ros2 run`
looks (lib/foundry_ros), `foundry-node --help` runs, foundry_msgs / foundry_ros / foundry_core import
from the install space, the ament index knows both packages, and launch/ + config/ are in
share/foundry_ros. Skipped when PyPI (colcon) or the build tools are not available.

Processes that load ROS get the local-only DDS environment of foundry_ros.dds (none starts rclpy).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foundry_ros.dds import ros_env
from support import REPO_ROOT
from support.colcon import (ColconUnavailable, build_env, colcon_venv, copy_repo_into_workspace,
                            missing_build_tools, project_venv)

pytestmark = pytest.mark.slow

PACKAGE = "foundry_ros"
MESSAGES = {p.stem for p in (REPO_ROOT / "msg").glob("*.msg")}


def _console_scripts() -> dict[str, str]:
    """setup.py's console_scripts entries as {name: "module:function"} (read with ast, not run)."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)["console_scripts"]
            return dict(tuple(part.strip() for part in e.split("=", 1)) for e in entries)
    raise AssertionError("setup.py has no entry_points")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace built with `colcon build` (module-wide: one build for all the checks)."""
    venv = project_venv()
    why = missing_build_tools(venv)
    if why:
        pytest.skip(why)
    try:
        colcon = colcon_venv()
    except ColconUnavailable as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("colcon_ws")
    copy_repo_into_workspace(root)
    env = build_env(venv, root / "colcon_home")
    listed = _run([str(colcon), "list"], root, env, 60)
    assert listed.returncode == 0, listed.stderr
    # colcon discovers exactly one package (it never looks below a package.xml) and it is ament_cmake
    assert listed.stdout.split("\n")[:-1] == [f"{PACKAGE}\tsrc/{PACKAGE}\t(ros.ament_cmake)"], listed.stdout
    built = _run([str(colcon), "build"], root, env, 900)
    if built.returncode != 0:
        log = root / "log" / "latest_build" / PACKAGE / "stdout_stderr.log"
        detail = log.read_text()[-4000:] if log.is_file() else built.stdout + built.stderr
        pytest.fail(f"colcon build failed:\n{detail}")
    return root


def _in_install_env(workspace: Path, cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``cmd`` after `source install/setup.bash`, with the local-only DDS environment."""
    env = ros_env(build_env(project_venv(), workspace / "colcon_home"), workdir=tmp_path / "ros")
    script = '. install/setup.bash && exec "$@"'
    return _run(["bash", "-c", script, "bash", *cmd], workspace, env, 120)


def test_console_scripts_are_installed_where_ros2_run_looks(workspace, tmp_path):
    lib = workspace / "install" / PACKAGE / "lib" / PACKAGE
    assert sorted(p.name for p in lib.iterdir()) == sorted(_console_scripts())
    node = _in_install_env(workspace, [str(lib / "foundry-node"), "--help"], tmp_path)
    assert node.returncode == 0, node.stderr
    assert node.stdout.startswith("usage: foundry-node"), node.stdout


def test_launch_and_config_are_installed_in_the_share_directory(workspace):
    share = workspace / "install" / PACKAGE / "share" / PACKAGE
    for rel in ("launch/foundry.launch.py", "config/foundry.yaml", "package.xml"):
        assert (share / rel).read_bytes() == (REPO_ROOT / rel).read_bytes(), rel


def test_install_space_provides_the_packages_and_the_messages(workspace, tmp_path):
    check = textwrap.dedent("""
        import json, os
        import foundry_core, foundry_msgs, foundry_ros
        from ament_index_python.packages import (get_package_prefix, get_package_share_directory,
                                                 get_resource)
        from foundry_msgs.msg import InferenceReport
        from rclpy.serialization import deserialize_message, serialize_message

        m = InferenceReport(backend="colcon", frame_index=3)
        prefix = get_package_prefix("foundry_ros")
        lib = os.path.join(prefix, "lib", "foundry_ros")  # where `ros2 run` / launch_ros look
        print(json.dumps({
            "modules": [os.path.dirname(mod.__file__) for mod in (foundry_core, foundry_msgs, foundry_ros)],
            "prefix": prefix,
            "msgs_prefix": get_package_prefix("foundry_msgs"),
            "share": get_package_share_directory("foundry_ros"),
            "interfaces": get_resource("rosidl_interfaces", "foundry_msgs")[0].split(),
            "executables": sorted(f for f in os.listdir(lib) if os.access(os.path.join(lib, f), os.X_OK)),
            "round_trip": deserialize_message(serialize_message(m), InferenceReport) == m,
        }))
    """)
    run = _in_install_env(workspace, [sys.executable, "-c", check], tmp_path)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    prefix = str(workspace / "install" / PACKAGE)
    site = Path(prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert got["modules"] == [str(site / name) for name in ("foundry_core", "foundry_msgs", "foundry_ros")]
    assert got["prefix"] == got["msgs_prefix"] == prefix
    assert got["share"] == str(Path(prefix) / "share" / PACKAGE)
    assert {Path(i).stem for i in got["interfaces"] if i.endswith(".msg")} == MESSAGES
    assert got["executables"] == sorted(_console_scripts())
    assert got["round_trip"] is True
