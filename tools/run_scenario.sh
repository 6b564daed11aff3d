#!/usr/bin/env bash
# Run one loadgen scenario: tools/run_scenario.sh Offline|Server [main.py flags...]
# CHECKPOINT_PATH and DATASET_PATH select the real model and dataset (the demo when unset);
# OUTPUT_LOG_DIR sets where the logs go (default output-logs/<scenario>).
set -euo pipefail
scenario="$1"; shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=(--scenario "$scenario" --output-log-dir "${OUTPUT_LOG_DIR:-output-logs/${scenario,,}}")
if [[ -n "${CHECKPOINT_PATH:-}" ]]; then args+=(--model-path "$CHECKPOINT_PATH"); fi
if [[ -n "${DATASET_PATH:-}" ]]; then args+=(--dataset-path "$DATASET_PATH"); fi
exec python "$repo/main.py" "${args[@]}" "$@"
