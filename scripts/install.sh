#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install pinned dependencies + the package.
# Idempotent: re-running with unchanged requirements only checks a stamp (about a second).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${FOUNDRY_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.foundry-install-stamp"
want="$(cat requirements.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] installing pinned dependencies (torch==2.13.0 CPU build) into $VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements-dev.txt
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
else
  echo "[install] $VENV is up to date"
fi
# ROS 2 Kilted wheels (rclpy, Fast DDS, message packages) and the project's own messages from msg/,
# built with rosidl into the venv: importable with no ROS installation and no sourcing.
if [ "${FOUNDRY_SKIP_ROS:-0}" != "1" ]; then
  FOUNDRY_VENV="$VENV" bash scripts/build_msgs.sh
fi
