"""The ``foundry-node`` entry point: arguments, stacked parameter files, signals, executor, shutdown.

``foundry_ros.node:main`` (the console script, ``python -m foundry_ros.node``) runs :func:`main`
here; :mod:`foundry_ros.node` holds the node itself.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from foundry_ros.model import PredictorFactory
from foundry_ros.node import NODE_NAME, FoundryNode

__all__ = ["main"]

def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from rclpy.utilities import remove_ros_args

    try:
        own = remove_ros_args(["foundry-node"] + list(argv))[1:]
    except Exception as e:  # RCLInvalidROSArgsError: a malformed --ros-args section
        print(f"foundry-node: invalid ROS arguments: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    parser = argparse.ArgumentParser(
        prog="foundry-node", description="Foundry ROS 2 perception node (PointCloud2 -> labels/segments).",
        epilog="Further ROS arguments go after --ros-args, e.g. --ros-args -p deadline_ms:=80.0 "
               "-r /points:=/lidar/points")
    parser.add_argument("--params-file", action="append", default=[], metavar="YAML",
                        help="ROS 2 parameters file ('foundry: ros__parameters: {...}'); repeatable, later "
                             "files override earlier ones (merged into one before rcl reads them, see "
                             "foundry_ros.params_files), --ros-args -p overrides them all")
    parser.add_argument("--lifecycle", action="store_true",
                        help="run the managed (lifecycle) node: it starts unconfigured and follows "
                             "configure / activate / deactivate / cleanup / shutdown (foundry_ros.lifecycle_node)")
    return parser.parse_args(own), list(argv)


class _SignalFlag:
    """SIGINT / SIGTERM handlers at the Python level that only record the signal, never raise.

    Installed before ``rclpy.init``: rclpy's own handlers (SignalHandlerOptions.ALL) chain to them and do
    the work (shut the context down, wake the executor), so no KeyboardInterrupt can surface anywhere
    (rclpy.init, node construction, predictor warm-up / calibration, spin, destroy_node, shutdown). A
    signal that arrives before rclpy's handlers exist is seen through :attr:`signum` instead."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        import signal

        self.signum: int | None = None
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._record)

    def _record(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name if self.signum is not None else "shutdown"

    def ignore_from_now(self) -> None:
        """SIG_IGN for both: a late signal while the interpreter exits (when Python has put back the
        default action, which kills the process: exit -2) changes nothing any more."""
        import signal

        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _merged_params_file(paths: list[str]) -> str | None:
    """The ``--params-file`` files merged into one temporary parameters file (None: no files).

    rcl loses a later file's value of another type (or an empty list) for a parameter an earlier file
    set under the same node key; merged here, every parameter reaches rcl once (:mod:`~foundry_ros.params_files`).
    """
    import tempfile

    from foundry_ros.params_files import merge_params_files, merged_yaml

    if not paths:
        return None
    text = merged_yaml(merge_params_files(paths))
    fd, merged = tempfile.mkstemp(prefix="foundry-params-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return merged


class _Executor(MultiThreadedExecutor):
    """A MultiThreadedExecutor whose ``__del__`` survives a constructor that failed half-way (rclpy
    reads ``_sigint_gc`` there, set late in ``__init__``; a signal during start-up shuts the context
    down under it, and the failed object's ``__del__`` would print a traceback)."""

    _sigint_gc = None


def _shut_down(node: FoundryNode | None, executor: MultiThreadedExecutor | None) -> None:
    """Destroy the node (stops the worker), the executor and the context; every step runs even if
    an earlier one fails."""
    steps = [("destroy_node", node.destroy_node if node is not None else None),
             ("executor.shutdown", (lambda: executor.shutdown(timeout_sec=1.0)) if executor is not None else None),
             ("rclpy.try_shutdown", rclpy.try_shutdown)]
    for what, step in steps:
        if step is None:
            continue
        try:
            step()
        except (Exception, KeyboardInterrupt) as e:
            print(f"foundry-node: {what} during shutdown: {type(e).__name__}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None, predictor_factory: PredictorFactory | None = None) -> int:
    """Console entry ``foundry-node``: init rclpy, spin a MultiThreadedExecutor, exit 0 on SIGINT/SIGTERM
    (at any stage, also repeated or sent to the whole process group: no traceback); 1 when the node
    fails (a FATAL line with the reason), 2 for bad arguments or params files.

    Meant as the process's entry point: it installs signal handlers and, once it returns, ignores
    SIGINT / SIGTERM for the rest of the process's life (see :class:`_SignalFlag`)."""
    stop = _SignalFlag()
    try:
        return _run(argv, predictor_factory, stop)
    finally:
        stop.ignore_from_now()


def _run(argv: list[str] | None, predictor_factory: PredictorFactory | None, stop: _SignalFlag) -> int:
    from rclpy.signals import SignalHandlerOptions

    from foundry_ros.params_files import ParamsFileError

    argv = list(sys.argv[1:] if argv is None else argv)
    ns, argv = _parse_args(argv)
    for path in ns.params_file:
        if not os.path.isfile(path):
            print(f"foundry-node: params file {path!r} not found", file=sys.stderr)
            return 2
    try:
        merged = _merged_params_file(ns.params_file)
    except (ParamsFileError, OSError, UnicodeDecodeError) as e:
        print(f"foundry-node: {e}", file=sys.stderr)
        return 2
    ros_argv = ["foundry-node"] + (["--ros-args", "--params-file", merged, "--"] if merged else [])
    ros_argv += argv  # the user's own --ros-args come last and take precedence
    try:
        rclpy.init(args=ros_argv, signal_handler_options=SignalHandlerOptions.ALL)
    except Exception as e:  # malformed --ros-args
        print(f"foundry-node: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if merged:
            os.unlink(merged)  # rcl has read it (rcl_init parses every --params-file)
    log = rclpy.logging.get_logger(NODE_NAME)
    node = None
    executor = None
    code = 0
    interrupted = ""
    try:
        if stop.signum is None:  # a signal during rclpy.init: do not start at all
            if ns.lifecycle:
                from foundry_ros.lifecycle_node import FoundryLifecycleNode
                node = FoundryLifecycleNode(predictor_factory)
            else:
                node = FoundryNode(predictor_factory)
            executor = _Executor(num_threads=2)
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:
        if stop.signum is None and rclpy.ok():
            log.fatal(f"foundry node failed: {type(e).__name__}: {e}")
            code = 1
        else:  # the context was shut down under a starting node (a signal during start-up)
            interrupted = f"start-up interrupted ({type(e).__name__}: {e}); "
    finally:
        _shut_down(node, executor)
    if code == 0:  # logged once the node is gone: its /rosout publisher died with the context
        log.info(f"foundry node stopped ({interrupted}{stop.name})")
    return code

