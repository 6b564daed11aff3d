"""Running main.py and reading what loadgen wrote, for the harness tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.loadgen_logs import read_detail_log

ROOT = Path(__file__).resolve().parents[1]


def run_main(*flags: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """main.py in a subprocess, as a user runs it (its own process: loadgen faults can't kill pytest)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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
