#!/usr/bin/env bash
# README command 1: install everything (venv, ROS 2 wheels, messages), then run the main job: the
# Foundry node on the shipped default model, fed for 30 s with the embedded simulated LiDAR stream on
# loopback-only DDS. Extra arguments go to the demo, e.g. --scenario steady|deadline-step|cpu-hog|all
# (default steady), --duration 60, --bag PATH --topic T, --live T.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec "${FOUNDRY_VENV:-.venv}/bin/python" -m foundry_ros.demo "$@"
