"""Server runs at several query rates: latencies per rate and the highest rate that stays VALID.

Each rate is one tools.benchmark run in its own process (loadgen allows one test per process);
every flag after the sweep's own goes to it unchanged (backend, batching, model, dataset...).

    python -m tools.server_sweep --qps 2,4,8,16 --output-json sweep.json -- --backend hf --batching static
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.benchmark_runs import run_benchmark_process
from tools.results_output import emit_results

FIGURES = ("result_validity", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "wall_s", "num_errors",
           "failure")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", required=True, help="comma-separated Server query rates, e.g. 2,4,8")
    parser.add_argument("--output-json", type=Path, help="write the results here (sorted keys)")
    parser.add_argument("benchmark_flags", nargs=argparse.REMAINDER,
                        help="after --: flags for tools.benchmark / main.py (not --scenario or --target-qps)")
    return parser


def validate_args(args: argparse.Namespace) -> list[float]:
    try:
        rates = sorted({float(q) for q in args.qps.split(",")})
    except ValueError:
        raise SystemExit(f"--qps {args.qps!r}: expected numbers like 2,4,8") from None
    if rates[0] <= 0:
        raise SystemExit("--qps: every rate must be positive")
    args.benchmark_flags = [f for f in args.benchmark_flags if f != "--"]
    for flag in ("--scenario", "--target-qps", "--output-json", "--accuracy"):
        if flag in args.benchmark_flags:
            raise SystemExit(f"{flag}: the sweep sets it itself; drop it from the benchmark flags")
    if args.output_json is not None and not args.output_json.parent.is_dir():
        raise SystemExit(f"--output-json {args.output_json}: folder {args.output_json.parent} does not exist")
    return rates


def run_rate(rate: float, flags: list[str], folder: Path) -> dict[str, Any]:
    """One benchmark run at `rate`; its figures (the failure, when it produced none)."""
    figures = run_benchmark_process(["--scenario", "Server", "--target-qps", f"{rate:g}", "--output-log-dir",
                                     str(folder / f"logs_{rate:g}"), *flags], folder / f"qps_{rate:g}.json")
    return {"target_qps": rate, **{key: figures.get(key) for key in FIGURES}}


def main(args: argparse.Namespace) -> dict[str, Any]:
    rates = validate_args(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="server-sweep-") as tmp:
        for rate in rates:
            runs.append(run_rate(rate, args.benchmark_flags, Path(tmp)))
            print(f"{rate:g} QPS: {runs[-1]['result_validity']}", file=sys.stderr, flush=True)
    valid = [r["target_qps"] for r in runs if r["result_validity"] == "VALID"]
    return {"tool": "server_sweep", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": {"qps": rates, "benchmark_flags": args.benchmark_flags,
                       "output_json": str(args.output_json) if args.output_json else None},
            "runs": runs, "highest_valid_qps": max(valid, default=None)}


def render_table(results: dict[str, Any]) -> str:
    header = f"{'QPS':>6} {'result':>8} {'TTFT p50':>10} {'TTFT p99':>10} {'TPOT p50':>10} {'TPOT p99':>10}  (ms)"
    lines = [f"Server sweep, benchmark flags: {' '.join(results['config']['benchmark_flags']) or '(defaults)'}",
             header]
    for run in results["runs"]:
        times = " ".join(f"{run[k]:>10.1f}" if run.get(k) is not None else f"{'-':>10}"
                         for k in ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms"))
        lines.append(f"{run['target_qps']:>6g} {run['result_validity']:>8} {times}"
                     + (f"  {run['failure']}" if run.get("failure") else ""))
    lines.append(f"highest VALID rate: {results['highest_valid_qps'] or 'none'}")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    results = main(build_parser().parse_args(argv))
    emit_results(results, render_table(results))
    return 0 if results["highest_valid_qps"] is not None else 1


if __name__ == "__main__":
    sys.exit(cli())
