"""foundry_ros.model: what the node reads of its predictor, and the input-channel check (no ROS)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from foundry_ros.model import ModelInfo, check_channels, default_predictor_factory
from support.fakes import FakePredictor


def test_model_info_of_a_predictor_and_of_a_bare_object():
    info = ModelInfo.of(FakePredictor(in_channels=4))
    assert (info.backend, info.precision, info.model_hash) == ("fake-cpu", "fp32", "fake0123456789ab")
    assert (info.min_budget, info.max_budget, info.in_channels) == (16, 16384, 4)
    assert ModelInfo.of(SimpleNamespace()) == ModelInfo()


def test_check_channels():
    assert check_channels(None, []) is None
    assert check_channels(4, ["intensity"]) is None
    with pytest.raises(ValueError, match=r"needs 4 input channels \(xyz \+ 1\).*gives 3"):
        check_channels(4, [])
    assert "the extra ones are ignored" in check_channels(3, ["intensity"])


def test_default_factory_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        default_predictor_factory(str(tmp_path / "none.safetensors"), "cpu", "auto")
