"""launch/foundry.launch.py: output remapping arguments, the input argument and its documented choices."""
from __future__ import annotations

import ast

import pytest

from foundry_ros import params as P
from support.launch_stubs import LAUNCH_FILE, run_launch_file

PRIVATE_OUTPUTS = {"segments_topic": "~/segments", "report_topic": "~/report", "labels_topic": "~/labels",
                   "embeddings_topic": "~/embeddings", "debug_segments_rgb_topic": "~/debug/segments_rgb",
                   "debug_supertokens_topic": "~/debug/supertokens"}


def _remaps(run) -> dict[str, str]:
    return {src: dst.perform(run["context"]) for src, dst in run["node"]["remappings"]}


def test_output_remaps_default_to_identity(tmp_path, monkeypatch):
    run = run_launch_file(tmp_path, monkeypatch)
    assert {a: run["declared"][a] for a in PRIVATE_OUTPUTS} == PRIVATE_OUTPUTS
    assert _remaps(run) == {private: private for private in PRIVATE_OUTPUTS.values()}  # ~/x:=~/x is a no-op
    assert run["node"]["name"] == "foundry" and run["node"]["parameters"] == [run["config"]]


def test_output_remaps_and_input_topic_from_arguments(tmp_path, monkeypatch):
    run = run_launch_file(tmp_path, monkeypatch, {"segments_topic": "/perception/segments",
                                                  "debug_segments_rgb_topic": "viz/rgb", "input_topic": "/lidar/points",
                                                  "namespace": "robot1"})
    remaps = _remaps(run)
    assert remaps["~/segments"] == "/perception/segments" and remaps["~/debug/segments_rgb"] == "viz/rgb"
    assert remaps["~/report"] == "~/report"
    assert run["node"]["namespace"] == "robot1"
    assert run["node"]["parameters"][1] == {"input_topics": ["/lidar/points"]}


def test_remapped_names_are_the_nodes_output_names():
    node = pytest.importorskip("foundry_ros.node", reason="rclpy not installed", exc_type=ImportError)
    assert set(PRIVATE_OUTPUTS.values()) == {node.SEGMENTS_TOPIC, node.REPORT_TOPIC, node.LABELS_TOPIC,
                                             node.EMBEDDINGS_TOPIC, node.DEBUG_SEGMENTS_RGB_TOPIC,
                                             node.DEBUG_SUPERTOKENS_TOPIC}


def test_docstring_lists_only_accepted_precisions():
    doc = ast.get_docstring(ast.parse(LAUNCH_FILE.read_text()))
    line = next(ln for ln in doc.splitlines() if ln.lstrip("* ").startswith("``precision``"))
    quoted = {w.strip('",') for w in line.split() if w.startswith('"')}
    assert quoted == set(P.PRECISION_CHOICES), line
    assert "bf16" not in doc


def test_lifecycle_argument_starts_the_managed_node(tmp_path, monkeypatch):
    plain = run_launch_file(tmp_path, monkeypatch)
    assert plain["kind"] == "node" and plain["node"]["arguments"] == []
    managed = run_launch_file(tmp_path, monkeypatch, {"lifecycle": "true", "namespace": "robot1"})
    assert managed["kind"] == "lifecycle_node" and managed["node"]["arguments"] == ["--lifecycle"]
    assert managed["node"]["name"] == "foundry" and managed["node"]["namespace"] == "robot1"
