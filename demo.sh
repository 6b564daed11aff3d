#!/usr/bin/env bash
# The whole benchmark on the embedded demo, end to end: set up .venv and the MBXP toolchains,
# build the demo assets, run an Offline performance test, then an accuracy run that is
# evaluated (PASS/FAIL table) and consolidated. Logs go to output-logs/demo/<date-time>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/setup.sh --eval
# shellcheck disable=SC1091
. .venv/bin/activate
out="output-logs/demo/$(date +%Y%m%d-%H%M%S)"
python main.py --scenario Offline --output-log-dir "$out/offline-performance" "$@"
OUTPUT_DIR="$out/offline-accuracy" bash run_accuracy.sh "$@"
