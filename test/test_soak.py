"""The soak tool end to end on the fake-predictor node: every published cloud is accounted for."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import REPO_ROOT, TEST_DIR
from support.ros_session import with_test_path

pytest.importorskip("rclpy")
pytest.importorskip("foundry_msgs.msg")


def test_short_soak_accounts_for_every_published_frame(tmp_path):
    """The tool sets up its own local-only DDS (foundry_ros.dds.ros_env) for itself and the node."""
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "foundry_ros.soak", "--duration", "4", "--rate", "20", "--source", "sim",
           "--sim-frames", "2", "--points", "20000", "--warmup-s", "1",
           "--node-cmd", str(TEST_DIR / "foundry_node_fake.py"), "--param", 'extra_fields=["intensity"]',
           "--param", "max_age_s=0.0", "--out", str(out), "--work", str(tmp_path / "work")]
    run = subprocess.run(cmd, env=with_test_path(dict(os.environ)), cwd=str(REPO_ROOT),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["published"] == 80
    assert r["uncounted"] == 0, r                                   # received + lost = published
    assert r["received"] + r["lost_counted"] == r["published"]
    assert 0 <= r["in_flight"] <= 1, r                              # received = processed + stale + ... (+ the slot)
    assert r["processed"] >= 1 and r["reports"] >= 1
    assert r["rss_mb_end"] > 0 and r["p95_ms"] is not None
