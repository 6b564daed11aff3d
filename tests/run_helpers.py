"""Running main.py and reading what loadgen wrote, and the small models the harness tests build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from harness.loadgen_logs import read_detail_log

ROOT = Path(__file__).resolve().parents[1]


def run_main(*flags: str, cwd: Path, timeout: float = 900,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """main.py in a subprocess, as a user runs it (its own process: loadgen faults can't kill pytest);
    env: variables to add to this process's environment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def detail(log_dir: Path) -> dict:
    return read_detail_log(log_dir / "mlperf_log_detail.txt")


def accuracy_entries(log_dir: Path) -> list[dict]:
    return json.loads((log_dir / "mlperf_log_accuracy.json").read_text())


def ids_of(hex_data: str) -> list[int]:
    return np.frombuffer(bytes.fromhex(hex_data), dtype=np.int32).tolist()


def answers_by_index(log_dir: Path) -> dict[int, list[int]]:
    return {e["qsl_idx"]: ids_of(e["data"]) for e in accuracy_entries(log_dir)}


def random_tiny_mixtral(folder: Path, vocab_size: int) -> str:
    """A one-layer Mixtral with random weights saved in folder: it rarely says EOS, and prompt ids
    beyond its vocabulary make generation fail for real."""
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=64, num_local_experts=2,
                           num_experts_per_tok=1, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096)
    MixtralForCausalLM(config).save_pretrained(folder)
    return str(folder)
