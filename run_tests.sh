#!/usr/bin/env bash
# Install everything the tests need (venv, MBXP toolchains, vLLM for the CPU), build the demo
# assets, then lint and run the whole test suite. This is what CI runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/setup.sh --eval --vllm
# shellcheck disable=SC1091
. .venv/bin/activate
python -m harness.demo
ruff check .
python -m pytest -q "$@"
