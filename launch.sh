#!/usr/bin/env bash
# Start the GPU image with every GPU, this repository at /workspace/mixtral, and the
# checkpoint and dataset folders mounted read-only, as the calling user:
#   CHECKPOINT_DIR=/data/Mixtral-8x7B-Instruct-v0.1 DATASET_DIR=/data/mixtral-dataset bash launch.sh [command...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mounts=(-v "$repo:/workspace/mixtral")
if [[ -n "${CHECKPOINT_DIR:-}" ]]; then mounts+=(-v "$CHECKPOINT_DIR:/model:ro"); fi
if [[ -n "${DATASET_DIR:-}" ]]; then mounts+=(-v "$DATASET_DIR:/dataset:ro"); fi
exec docker run --rm -it --gpus all --ipc=host --user "$(id -u):$(id -g)" -e HOME=/tmp \
  "${mounts[@]}" -w /workspace/mixtral "${IMAGE:-mixtral-mlperf:latest}" "${@:-bash}"
