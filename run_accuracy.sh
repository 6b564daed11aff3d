#!/usr/bin/env bash
# Accuracy run end to end: generate (main.py --accuracy), score (evaluate-accuracy.py), merge the
# journal into the dataset (consolidate_results.py). Stops at the first failing step.
#
#   CHECKPOINT_PATH  Mixtral checkpoint folder (unset: the demo model and tokenizer)
#   DATASET_PATH     dataset pickle (unset: the demo dataset)
#   OUTPUT_DIR       where logs, results.json, accuracy.txt and full_output.pkl go (default output-logs/accuracy)
#   SCENARIO         Offline (default) or Server
#   N_WORKERS        parallel MBXP checks (default 2)
# Extra arguments go to main.py, e.g. ./run_accuracy.sh --backend vllm
set -euo pipefail

cd "$(dirname "$0")"
OUTPUT_DIR=${OUTPUT_DIR:-output-logs/accuracy}
SCENARIO=${SCENARIO:-Offline}
mkdir -p "$OUTPUT_DIR"

model_args=() checkpoint_args=() dataset_args=() eval_dataset_args=()
if [[ -n "${CHECKPOINT_PATH:-}" ]]; then
    model_args=(--model-path "$CHECKPOINT_PATH")
    checkpoint_args=(--checkpoint-path "$CHECKPOINT_PATH")
fi
if [[ -n "${DATASET_PATH:-}" ]]; then
    dataset_args=(--dataset-path "$DATASET_PATH")
    eval_dataset_args=(--dataset-file "$DATASET_PATH")
fi

echo "== 1/3 accuracy run ($SCENARIO) -> $OUTPUT_DIR"
python main.py --scenario "$SCENARIO" --accuracy --output-log-dir "$OUTPUT_DIR" \
    "${model_args[@]}" "${dataset_args[@]}" "$@"

echo "== 2/3 evaluate-accuracy.py"
python evaluate-accuracy.py --mlperf-accuracy-file "$OUTPUT_DIR/mlperf_log_accuracy.json" \
    --output-dir "$OUTPUT_DIR" --n_workers "${N_WORKERS:-2}" "${checkpoint_args[@]}" "${eval_dataset_args[@]}" \
    | tee "$OUTPUT_DIR/evaluate-accuracy.out"

echo "== 3/3 consolidate_results.py"
python consolidate_results.py --run-outputs "$OUTPUT_DIR/run_outputs" \
    --output-pkl-path "$OUTPUT_DIR/full_output.pkl" "${checkpoint_args[@]}" "${dataset_args[@]}"

echo
echo "== Accuracy against the official targets ($OUTPUT_DIR/results.json)"
python - "$OUTPUT_DIR/results.json" <<'PY'
import json
import sys

from harness.evaluation.report import targets_table

summary = json.load(open(sys.argv[1]))
print(targets_table(summary["checks"]))
PY
