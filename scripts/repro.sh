#!/usr/bin/env bash
# Set up (if needed) and reproduce the whole pipeline on the offline mirror with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
# dvc.yaml's fetch stage reads the mirror in place: say so before minutes of set-up, not as DVC's "No such file"
if [ ! -d ../shared/datasets ]; then
  echo "scripts/repro.sh: the offline data mirror ../shared/datasets is missing: put the shared folder beside" \
       "this checkout ($(cd .. && pwd)/shared/datasets), then run this again" >&2
  exit 1
fi
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
