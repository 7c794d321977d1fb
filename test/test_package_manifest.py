"""package.xml: one ament_cmake package for colcon and rosdep, its rosdep keys, and the messages in it.

colcon and `rosdep install --from-paths src --ignore-src` find packages the same way (catkin_pkg /
colcon-recursive-crawl: the walk stops at the first package.xml), so msg/package.xml is never seen in a
workspace: the root package builds msg/ (CMakeLists.txt) and must declare what that build needs, and
must not depend on a `foundry_msgs` key that rosdep could not resolve. The real build is in
test_colcon_build.py.
"""
from __future__ import annotations


import pytest

from support import REPO_ROOT

catkin_pkg = pytest.importorskip("catkin_pkg", reason="catkin_pkg comes with the ROS 2 wheels (scripts/build_msgs.sh)")
from catkin_pkg.package import parse_package  # noqa: E402
from catkin_pkg.packages import find_packages  # noqa: E402

# rosdep keys the node needs at run time (each is in ros/rosdistro: rosdep/python.yaml or kilted/
# distribution.yaml, checked 2026-08)
RUN_KEYS = {
    "rclpy", "rcl_interfaces", "std_msgs", "sensor_msgs", "diagnostic_msgs", "lifecycle_msgs",
    "visualization_msgs", "launch", "launch_ros", "ament_index_python", "rosidl_default_runtime",
    "python3-numpy", "python3-yaml", "python3-scipy", "python3-matplotlib", "python3-torch",
    "python3-onnxruntime-pip", "python3-rosbags-pip", "python3-h5py", "python3-sklearn", "python3-tqdm",
}
# every key rosdep may be asked to resolve for this repository (same source)
KNOWN_KEYS = RUN_KEYS | {"ament_cmake", "ament_cmake_python", "rosidl_default_generators", "python3-pytest"}


def _names(deps) -> set[str]:
    return {d.name for d in deps}


def _all_deps(pkg) -> set[str]:
    return _names(pkg.buildtool_depends + pkg.build_depends + pkg.build_export_depends + pkg.exec_depends
                  + pkg.test_depends + pkg.doc_depends)


@pytest.fixture(scope="module")
def root_pkg():
    return parse_package(str(REPO_ROOT / "package.xml"))


def test_root_package_is_a_valid_ament_cmake_package(root_pkg):
    root_pkg.validate()
    assert root_pkg.name == "foundry_ros"
    assert root_pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {g.name for g in root_pkg.member_of_groups}


def test_root_package_declares_the_run_time_rosdep_keys(root_pkg):
    assert RUN_KEYS <= _names(root_pkg.exec_depends + root_pkg.build_export_depends)


def test_rosdep_from_paths_finds_every_key_in_a_workspace(tmp_path, root_pkg):
    """What `rosdep install --from-paths src --ignore-src` sees with the repository in src/."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "foundry_ros").symlink_to(REPO_ROOT, target_is_directory=True)
    found = {pkg.name: path for path, pkg in find_packages(str(tmp_path / "src")).items()}
    assert found == {"foundry_ros": "foundry_ros"}  # msg/package.xml is below the root package
    unresolved = _all_deps(root_pkg) - set(found)
    assert "foundry_msgs" not in unresolved  # built by this package, not a key rosdep could resolve
    assert unresolved <= KNOWN_KEYS, unresolved - KNOWN_KEYS


def test_root_package_declares_what_the_message_build_needs(root_pkg):
    msgs = parse_package(str(REPO_ROOT / "msg" / "package.xml"))
    msgs.validate()
    assert msgs.name == "foundry_msgs"  # code imports foundry_msgs.msg
    assert _all_deps(msgs) <= _all_deps(root_pkg), _all_deps(msgs) - _all_deps(root_pkg)
    # CMakeLists.txt builds msg/ as its own CMake project and installs it into the package's prefix
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert 'SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}/msg"' in cmake


def test_cmake_reads_every_console_script_of_setup_py():
    """CMakeLists.txt takes the console scripts from setup.py lines written as `"name = module:function",`."""
    import ast
    import re

    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    [entries] = [ast.literal_eval(n.value)["console_scripts"] for n in ast.walk(tree)
                 if isinstance(n, ast.keyword) and n.arg == "entry_points"]
    # CMakeLists.txt's regexes: file(STRINGS REGEX) picks the lines, string(REGEX MATCH) the parts
    pattern = re.compile(r'^[ \t]*"([A-Za-z0-9_-]+) = ([A-Za-z0-9_.]+):([A-Za-z0-9_]+)",', re.MULTILINE)
    matched = {m.group(1) for m in pattern.finditer((REPO_ROOT / "setup.py").read_text())}
    assert matched == {e.split("=")[0].strip() for e in entries} and "foundry-node" in matched
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert '"^[ \\t]*\\"[A-Za-z0-9_-]+ = [A-Za-z0-9_.]+:[A-Za-z0-9_]+\\","' in cmake
