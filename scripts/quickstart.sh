#!/usr/bin/env bash
# Sets up (if needed) and runs the offline quickstart; the report lands in runs/quickstart/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/spatialprobe run "$@"
