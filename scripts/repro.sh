#!/usr/bin/env bash
# Set up (if needed) and reproduce the whole pipeline on the offline mirror with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
