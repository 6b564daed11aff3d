#!/usr/bin/env bash
# Build the GPU image: bash build.sh [image-name]   (default mixtral-mlperf:latest)
# With docker when its daemon answers, else with podman; ENGINE=podman|docker chooses.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else echo "build.sh: neither a running docker nor podman found; install one (or set ENGINE)" >&2; exit 1
  fi
fi
"$engine" build -t "${1:-mixtral-mlperf:latest}" -f Dockerfile .
