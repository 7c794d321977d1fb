"""Run the Foundry node (its real ``main``) with a FakePredictor of a chosen input width.

``python -m support.fake_node [--channels N] [--warm-up-s S] NODE_ARGS...``

* ``--channels N``: the fake's ``in_channels`` (default: not checked, so the shipped config's
  ``extra_fields: []`` starts; :mod:`support.fakes` wants 4 channels, i.e. ``extra_fields: [intensity]``).
* ``--warm-up-s S``: the fake gets a ``warm_up()`` that prints :data:`WARM_UP_MARK` to stderr and then
  sleeps S seconds, so a test can send a signal while the node is still starting (before spin).
"""
from __future__ import annotations

import argparse
import sys
import time

from support.fakes import FakePredictor

WARM_UP_MARK = "fake warm-up started"


class SlowStartPredictor(FakePredictor):
    """A FakePredictor whose warm-up takes ``warm_up_s`` seconds (announced on stderr first)."""

    def __init__(self, warm_up_s: float, **kw) -> None:
        super().__init__(**kw)
        self.warm_up_s = warm_up_s

    def warm_up(self) -> float:
        print(WARM_UP_MARK, file=sys.stderr, flush=True)
        time.sleep(self.warm_up_s)
        return self.warm_up_s * 1e3


def _run(argv: list[str]) -> int:
    from foundry_ros.node import main

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--warm-up-s", type=float, default=None)
    ns, rest = parser.parse_known_args(argv)

    def factory(*_):
        if ns.warm_up_s is None:
            return FakePredictor(in_channels=ns.channels)
        return SlowStartPredictor(ns.warm_up_s, in_channels=ns.channels)

    return main(rest, predictor_factory=factory)


if __name__ == "__main__":
    sys.exit(_run(sys.argv[1:]))
