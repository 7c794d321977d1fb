"""Run the Foundry node with the FakePredictor (test helper; same CLI as foundry-node).

Started as a child process by the tests, with test/ on PYTHONPATH (support.ros_session.with_test_path).
"""
import sys

from support.fakes import FakePredictor

from foundry_ros.node import main


def factory(model_path: str, device: str, precision: str, backend: str) -> FakePredictor:
    return FakePredictor(in_channels=4)  # xyz + intensity: the node must be given extra_fields ["intensity"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], predictor_factory=factory))
