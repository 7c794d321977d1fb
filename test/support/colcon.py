"""colcon in a venv of its own, a scratch workspace holding a copy of the repository, the build environment.

colcon never goes into the project venv (colcon-core pins setuptools<80 and brings pytest plugins): it
lives in ``build/colcon-venv/``, created once per set of pins of requirements-colcon.txt (about 10 s
with PyPI reachable) and reused afterwards. The build uses the ROS 2 wheels of the project venv the way
scripts/build_msgs.sh does (AMENT_PREFIX_PATH = CMAKE_PREFIX_PATH = the venv, whose CMake exports that
script has already rewritten), with the venv "activated" so that CMake finds its Python.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements-colcon.txt"
VENV_DIR = REPO_ROOT / "build" / "colcon-venv"
_STAMP = ".foundry-colcon-stamp"
# left out of the workspace copy: top-level local environments and outputs; caches at any depth
_TOP_EXCLUDES = {".venv", ".git", "build", "install", "log", "runs", ".pytest_cache"}
_ANY_EXCLUDES = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
# what pip prints when it cannot reach the index
_OFFLINE = re.compile(r"NewConnectionError|Max retries exceeded|Name or service not known|Temporary failure in "
                      r"name resolution|Network is unreachable|timed out|ProxyError|Could not fetch URL|"
                      r"No matching distribution found", re.IGNORECASE)
# inherited settings that would point the build at another ROS or Python
_DROPPED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "COLCON_PREFIX_PATH", "AMENT_PREFIX_PATH",
            "CMAKE_PREFIX_PATH", "AMENT_CURRENT_PREFIX", "COLCON_DEFAULTS_FILE")


class ColconUnavailable(RuntimeError):
    """colcon could not be installed: the package index is unreachable."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def colcon_venv(venv_dir: Path = VENV_DIR) -> Path:
    """Path of ``bin/colcon`` in ``venv_dir``, (re)created when requirements-colcon.txt or Python changed.

    Raises :class:`ColconUnavailable` when pip cannot reach the index, RuntimeError on other failures.
    """
    want = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    colcon = venv_dir / "bin" / "colcon"
    with open(venv_dir.parent / f"{venv_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once: one creates, the other waits
        stamp = venv_dir / _STAMP
        if colcon.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
            return colcon
        shutil.rmtree(venv_dir, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True, capture_output=True)
        pip = subprocess.run(
            [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             "--timeout", "20", "--retries", "1", "-r", str(REQUIREMENTS)],
            capture_output=True, text=True, timeout=600)
        if pip.returncode != 0:
            shutil.rmtree(venv_dir, ignore_errors=True)
            out = _tail(pip.stdout + pip.stderr)
            if _OFFLINE.search(out):
                raise ColconUnavailable(f"cannot install colcon (requirements-colcon.txt) from PyPI:\n{out}")
            raise RuntimeError(f"pip install -r requirements-colcon.txt failed:\n{out}")
        stamp.write_text(want + "\n")
    return colcon


def copy_repo_into_workspace(workspace: Path, name: str = "foundry_ros") -> Path:
    """``workspace/src/<name>``: a copy of the repository without its venv, build trees and caches."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(_ANY_EXCLUDES(directory, names))
        if Path(directory).resolve() == REPO_ROOT:
            skipped |= _TOP_EXCLUDES & set(names)
        return skipped

    dest = workspace / "src" / name
    shutil.copytree(REPO_ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def project_venv() -> Path:
    """The venv running the tests (it holds the ROS 2 wheels and the project's dependencies)."""
    return Path(sys.prefix)


def build_env(venv: Path, colcon_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) for `colcon build` against the ROS 2 wheels of ``venv`` only."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROPPED}
    env.update({
        "VIRTUAL_ENV": str(venv),  # as after `source .venv/bin/activate`: CMake's FindPython3 picks it
        "PATH": os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
        "AMENT_PREFIX_PATH": str(venv),
        "CMAKE_PREFIX_PATH": str(venv),
        "COLCON_HOME": str(colcon_home),  # no user-level colcon settings
    })
    return env


def missing_build_tools(venv: Path) -> str | None:
    """Why a colcon build of the repository cannot run here, or None."""
    for tool in ("cmake", "cc", "c++", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install cmake g++)"
    if sys.prefix == sys.base_prefix:
        return "the tests do not run in a venv holding the ROS 2 wheels (scripts/install.sh)"
    if not (venv / "share" / "rosidl_default_generators" / "cmake").is_dir():
        return f"rosidl_default_generators is missing from {venv}/share (scripts/build_msgs.sh)"
    for cmake_file in (venv / "share").glob("*/cmake/*.cmake"):
        if "/opt/python/cp311-cp311" in cmake_file.read_text(errors="replace"):
            return f"{cmake_file} has the wheel build machine's paths: run scripts/build_msgs.sh"
    return None
