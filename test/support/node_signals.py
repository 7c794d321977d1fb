"""A node process watched through its log only (no ROS in the test process): start it on a
local-only DDS environment, wait for a log line, signal it (alone or its whole process group), and
collect its exit code. For start-up and shutdown tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from foundry_ros import dds
from foundry_ros.process import stop_process
from support import REPO_ROOT
from support.ros_session import with_test_path

SHIPPED_CONFIG = REPO_ROOT / "config" / "foundry.yaml"
WAIT_S = 120.0  # start-up of a real model includes warm-up and calibration (~10 s on a loaded 2-core CPU)


class NodeProcess:
    """``python NODE_ARGV --params-file <shipped> --params-file <overrides> EXTRA`` in its own session
    (process group), stdout and stderr in ``log``. Use as a context manager (killed at the end)."""

    def __init__(self, tmp: Path, node_argv: Sequence[str], overrides: str | None = None,
                 extra: Sequence[str] = (), params_files: Sequence[Path] | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        files = [SHIPPED_CONFIG] if params_files is None else list(params_files)
        if overrides is not None:
            path = tmp / "overrides.yaml"
            path.write_text(overrides)
            files.append(path)
        self.log = tmp / "node.log"
        env = with_test_path(dds.ros_env(workdir=tmp / "ros"))
        args = [sys.executable, *node_argv, *sum((["--params-file", str(f)] for f in files), []), *extra]
        with open(self.log, "w") as log_f:
            self.child = subprocess.Popen(args, env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, stdout=log_f,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.child, timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, line: str, timeout: float = WAIT_S) -> None:
        """Until ``line`` is in the log; AssertionError (with the log) if the process exits first or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while line not in self.text():
            if self.child.poll() is not None:
                raise AssertionError(f"node exited ({self.child.returncode}) before {line!r}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} after {timeout:.0f} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def send(self, sig: int = signal.SIGINT, group: bool = False) -> None:
        """``sig`` to the node, or to its whole process group (as a terminal's Ctrl-C)."""
        if group:
            os.killpg(self.child.pid, sig)
        else:
            self.child.send_signal(sig)

    def exit_code(self, timeout: float = 60.0) -> int:
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node still running {timeout:.0f} s later:\n{self.text()[-3000:]}") from None
