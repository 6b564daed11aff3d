#!/usr/bin/env bash
# Build the GPU image: bash build.sh [image-name]   (default mixtral-mlperf:latest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
docker build -t "${1:-mixtral-mlperf:latest}" -f Dockerfile .
