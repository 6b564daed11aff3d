"""tools.benchmark runs in processes of their own, for the tools that compare several (loadgen
runs one test per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark_process(flags: Sequence[str], output_json: Path,
                          env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run's figures (tools.benchmark's JSON); when it wrote none, result_validity 'missing'
    and the failure: its exit status and last stderr line."""
    command = [sys.executable, "-m", "tools.benchmark", "--output-json", str(output_json), *flags]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if not output_json.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"result_validity": "missing", "failure": f"exit {done.returncode}: {last}"}
    return json.loads(output_json.read_text())
