#!/usr/bin/env bash
# Set up (if needed) and run the linter, the layer contracts (import-linter) and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest -q "$@"
