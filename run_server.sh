#!/usr/bin/env bash
# Server performance run; add --accuracy for an accuracy run. Honours CHECKPOINT_PATH,
# DATASET_PATH and OUTPUT_LOG_DIR (demo assets when the paths are unset); flags pass through.
exec "$(dirname "${BASH_SOURCE[0]}")/tools/run_scenario.sh" Server "$@"
