#!/usr/bin/env bash
# README command 1: install, then run the main job on the embedded default (generated shapes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec "${FOUNDRY_VENV:-.venv}/bin/foundry" demo "$@"
