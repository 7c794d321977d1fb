"""Local-only DDS for this process and its children, an rclpy session, and spinning until a condition.

rclpy is imported inside the functions, so test modules that also run without ROS can import this.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from foundry_ros import dds
from support import TEST_DIR

TIMEOUT_S = 15.0  # per wait; matching on loopback normally takes 0.05-3 s


def with_test_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with test/ first on PYTHONPATH, so child processes can import ``support``."""
    parts = [str(TEST_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(parts)}


@contextlib.contextmanager
def local_dds(workdir: Path) -> Iterator[dict[str, str]]:
    """The local-only DDS environment of foundry_ros.dds: applied to this process (before rclpy.init)
    while the block runs, and yielded (with test/ on PYTHONPATH) for child processes."""
    env = dds.ros_env(workdir=workdir)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in dds.ros_overrides(env).items():
            mp.setenv(key, value)
        for key in dds.REMOVED_KEYS + (dds.LEGACY_PROFILE_VAR,):
            mp.delenv(key, raising=False)
        yield with_test_path(env)
    dds.remove_stale_shm_segments()


@contextlib.contextmanager
def ros_session(name: str) -> Iterator[tuple[Any, Any]]:
    """(node, executor) in a private rclpy context (no signal handlers), shut down at the end."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = rclpy.create_node(name, context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        try:
            yield node, ex
        finally:
            ex.shutdown()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def spin_until(executor: Any, predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT_S,
               alive: Callable[[], str | None] | None = None) -> None:
    """Spin until predicate() holds; fail after timeout, or as soon as ``alive()`` returns a reason."""
    deadline = time.monotonic() + timeout
    while not predicate():
        reason = alive() if alive is not None else None
        if reason:
            raise AssertionError(f"{reason} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        executor.spin_once(timeout_sec=0.02)
