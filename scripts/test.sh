#!/usr/bin/env bash
# README command 2: install, then run the test suite (CPU only, no downloads, no GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec "${FOUNDRY_VENV:-.venv}/bin/python" -m pytest -q test "$@"
