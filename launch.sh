#!/usr/bin/env bash
# Start the GPU image with every GPU, this repository at /workspace/mixtral, and the
# checkpoint and dataset folders mounted read-only, as the calling user:
#   CHECKPOINT_DIR=/data/Mixtral-8x7B-Instruct-v0.1 DATASET_DIR=/data/mixtral-dataset bash launch.sh [command...]
# With docker when its daemon answers, else with podman; ENGINE=podman|docker chooses.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else echo "launch.sh: neither a running docker nor podman found; install one (or set ENGINE)" >&2; exit 1
  fi
fi
mounts=(-v "$repo:/workspace/mixtral")
if [[ -n "${CHECKPOINT_DIR:-}" ]]; then mounts+=(-v "$CHECKPOINT_DIR:/model:ro"); fi
if [[ -n "${DATASET_DIR:-}" ]]; then mounts+=(-v "$DATASET_DIR:/dataset:ro"); fi
if [[ "$engine" == podman ]]; then
  # podman reaches GPUs through NVIDIA's CDI spec (nvidia-ctk cdi generate); rootless, keep-id
  # makes the caller's files the container user's.
  engine_args=(--device nvidia.com/gpu=all)
  if [[ "$(id -u)" -ne 0 ]]; then engine_args+=(--userns=keep-id); fi
else
  engine_args=(--gpus all --user "$(id -u):$(id -g)")
fi
exec "$engine" run --rm -it "${engine_args[@]}" --ipc=host -e HOME=/tmp \
  "${mounts[@]}" -w /workspace/mixtral "${IMAGE:-mixtral-mlperf:latest}" "${@:-bash}"
