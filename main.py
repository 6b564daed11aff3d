"""Run the MLPerf Mixtral-8x7B benchmark: `python main.py --help`. The work is in harness/run.py.

loadgen and the HTTP client are imported (and torch, transformers or vLLM loaded later) only once
SIGINT and SIGTERM raise Interrupted, so that a signal during the imports ends the run in one
line with 130 or 143, as it does at any later phase (the dataset, the model load, the test).
"""

from __future__ import annotations

import sys

from harness.interrupts import Interrupted, raising_interrupts


def main(argv: list[str] | None = None) -> int:
    try:
        with raising_interrupts():
            from harness.run import run_command

            return run_command(argv)
    except Interrupted as exc:
        print(f"error: interrupted by {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
