"""Run the Foundry node with the FakePredictor (test helper; same CLI as foundry-node)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_predictor import FakePredictor  # noqa: E402

from foundry_ros.node import main  # noqa: E402


def factory(model_path: str, device: str, precision: str, backend: str) -> FakePredictor:
    return FakePredictor(in_channels=4)  # xyz + intensity: the node must be given extra_fields ["intensity"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], predictor_factory=factory))
