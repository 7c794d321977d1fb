"""A bounded busy process: one core at 100 % for at most a given time (the demo's cpu-hog scenario).

    python -m foundry_ros.cpu_hog --seconds 10 [--core N] [--parent PID]

The process pins itself to one core (``os.sched_setaffinity`` where the platform has it) and spins
until its time is up (never more than :data:`MAX_SECONDS`), or until its parent is gone (checked
every few milliseconds), so a hog never outlives whoever started it, even one killed with SIGKILL.
:class:`CpuHog` starts it as a child and kills it in ``stop()``, on leaving a ``with`` block
(also on Ctrl-C or an exception) and at interpreter exit.
"""
from __future__ import annotations

import argparse
import atexit
import os
import subprocess
import sys
import time

from .process import stop_process

__all__ = ["MAX_SECONDS", "CpuHog", "pick_core", "pin_to_core", "spin", "main"]

#: Longest a hog may run, whatever it is asked for.
MAX_SECONDS = 600.0
_CHECK_EVERY_S = 0.005


def pick_core() -> int | None:
    """The core a hog runs on: the last core this process may run on (None without affinity support)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def pin_to_core(core: int | None) -> bool:
    """Pin this process to ``core``; False when that is not possible here."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {int(core)})
    except OSError:
        return False
    return True


def spin(seconds: float, parent: int | None = None) -> float:
    """Busy-loop for ``seconds`` (at most MAX_SECONDS), or until ``parent`` is no longer this process's
    parent; returns the seconds spun."""
    t0 = time.monotonic()
    end = t0 + min(max(0.0, float(seconds)), MAX_SECONDS)
    x = 1.0
    while (now := time.monotonic()) < end:
        if parent is not None and os.getppid() != parent:
            break
        stop = now + _CHECK_EVERY_S
        while time.monotonic() < stop:
            x = x * 1.000001 + 1e-9
    return time.monotonic() - t0


class CpuHog:
    """The hog as a child process; ``start()`` returns self, ``stop()`` kills it (idempotent)."""

    def __init__(self, seconds: float, core: int | None = None, python: str = sys.executable) -> None:
        if not seconds > 0:
            raise ValueError(f"a hog needs seconds > 0, got {seconds}")
        self.seconds = min(float(seconds), MAX_SECONDS)
        self.core = pick_core() if core is None else int(core)
        self._python = python
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> "CpuHog":
        if self.proc is not None:
            raise RuntimeError("this hog was started already")
        cmd = [self._python, "-m", "foundry_ros.cpu_hog", "--seconds", repr(self.seconds), "--parent", str(os.getpid())]
        if self.core is not None:
            cmd += ["--core", str(self.core)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # -m finds foundry_ros here
        self.proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        atexit.register(self.stop)
        return self

    def stop(self) -> int | None:
        """Kill the hog (if still running); its exit code, None when it never started."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout=1.0)
        atexit.unregister(self.stop)
        return code

    def __enter__(self) -> "CpuHog":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m foundry_ros.cpu_hog", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, required=True, help=f"how long to spin (at most {MAX_SECONDS:.0f})")
    ap.add_argument("--core", type=int, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--parent", type=int, help="stop as soon as this pid is no longer the parent")
    args = ap.parse_args(argv)
    pin_to_core(pick_core() if args.core is None else args.core)
    spin(args.seconds, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
