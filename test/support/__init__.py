"""Test support package: tiny configs, exported tiny models, fakes and the node harness.

Importable as ``support`` because pytest puts ``test/`` on sys.path (``pythonpath`` in setup.cfg);
child processes started by tests get the same path through PYTHONPATH (``support.TEST_DIR``)."""
from __future__ import annotations

from pathlib import Path

TEST_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TEST_DIR.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
