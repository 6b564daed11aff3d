"""Benchmark one loadgen scenario on a backend: throughput, engine vs harness time, padding, memory, latency.

Takes every main.py flag (the demo by default, or --model-path/--dataset-path) and runs the test
through harness.run.execute, with a temporary user.conf: the one main.py would use, plus this tool's
overrides (--target-qps, --min-query-count). Prints a table and the same figures as JSON.

    python -m tools.benchmark --scenario Offline --batch-size 8 --output-json offline.json
    python -m tools.benchmark --scenario Server --target-qps 4 --plot server.png --output-json server.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import run as harness_run
from harness.backends.protocol import PaddingStats
from tools.results_output import emit_results

log = logging.getLogger(__name__)

NS_PER_MS = 1e6
# loadgen's own throughput keys differ per scenario: (samples/s key, tokens/s key)
LOADGEN_THROUGHPUT_KEYS = {
    "Offline": ("result_samples_per_second", "result_tokens_per_second"),
    "Server": ("result_completed_samples_per_sec", "result_completed_tokens_per_second"),
}
LATENCY_KEYS = {  # our key -> detail-log key (nanoseconds)
    "p50_ttft_ms": "result_first_token_50.00_percentile_latency_ns",
    "p99_ttft_ms": "result_first_token_99.00_percentile_latency_ns",
    "max_ttft_ms": "result_first_token_max_latency_ns",  # one slow query can fail early stopping
    "p50_tpot_ms": "result_time_per_output_token_50.00_percentile_ns",
    "p99_tpot_ms": "result_time_per_output_token_99.00_percentile_ns",
    "p50_latency_ms": "result_50.00_percentile_latency_ns",
    "p99_latency_ms": "result_99.00_percentile_latency_ns",
}


@dataclass(frozen=True)
class ThroughputMetrics:
    completed_samples: int
    output_tokens: int  # after post-processing, as loadgen counts them
    wall_s: float  # StartTest to its return
    setup_s: float  # model load or engine start, dataset load
    samples_per_s: float
    output_tokens_per_s: float
    loadgen_samples_per_s: float
    loadgen_tokens_per_s: float
    harness_s: float  # post-processing, journal and loadgen calls, summed over worker threads


@dataclass(frozen=True)
class EngineTimeMetrics:
    """Offline only: the Server SUT's workers live in the backend's serve loop for the whole test."""

    engine_s: float  # inside backend.generate minus the harness callbacks it ran, summed over workers
    harness_share_pct: float


@dataclass(frozen=True)
class PaddingMetrics:
    """Static batches (hf): slots computed for padding or for rows that already finished."""

    prompt_padding_waste_pct: float
    generated_padding_waste_pct: float


@dataclass(frozen=True)
class MemoryMetrics:
    peak_rss_mb: float  # this process; a vLLM engine core runs in its own process


@dataclass(frozen=True)
class ServerLatencyMetrics:
    target_qps: float
    p50_ttft_ms: float
    p99_ttft_ms: float
    max_ttft_ms: float
    p50_tpot_ms: float
    p99_tpot_ms: float
    p50_latency_ms: float
    p99_latency_ms: float


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """This tool's flags, added to main.py's."""
    parser.add_argument("--target-qps", type=float, help="Server: the query rate to test at (overrides user.conf)")
    parser.add_argument("--min-query-count", type=int,
                        help="this scenario's min_query_count (overrides user.conf; fewer Server queries "
                             "than 460 give a shorter but INVALID run)")
    parser.add_argument("--output-json", type=Path, help="write the results here (sorted keys)")
    parser.add_argument("--plot", type=Path, help="Server: PNG of the latency percentiles")


def build_parser() -> argparse.ArgumentParser:
    parser = harness_run.build_parser()
    parser.description = __doc__.splitlines()[0]
    add_cli_args(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    if args.accuracy:
        raise SystemExit("--accuracy: this tool measures performance; run main.py --accuracy for answers")
    if args.target_qps is not None:
        if args.scenario != "Server":
            raise SystemExit("--target-qps sets the Server query rate; add --scenario Server or drop it")
        if args.target_qps <= 0:
            raise SystemExit(f"--target-qps must be positive, got {args.target_qps}")
    if args.min_query_count is not None and args.min_query_count < 1:
        raise SystemExit(f"--min-query-count must be at least 1 (0 crashes loadgen), got {args.min_query_count}")
    if args.plot is not None and args.scenario != "Server":
        raise SystemExit("--plot draws Server latencies; add --scenario Server or drop it")
    for flag, path in (("--output-json", args.output_json), ("--plot", args.plot)):
        if path is not None and not path.parent.is_dir():
            raise SystemExit(f"{flag} {path}: folder {path.parent} does not exist")


def base_user_conf(args: argparse.Namespace) -> Path:
    """The user.conf main.py would use for these flags."""
    if args.user_conf is not None:
        return args.user_conf
    demo = harness_run.uses_demo(args.model_path, args.dataset_path, args.backend)
    return harness_run.DEMO_USER_CONF if demo else harness_run.ROOT / "user.conf"


def conf_overrides(args: argparse.Namespace) -> list[str]:
    """user.conf lines appended after the base file (loadgen keeps the last value of a key)."""
    key = f"{harness_run.MODEL_KEY}.{args.scenario}"
    lines = []
    if args.target_qps is not None:
        lines.append(f"{key}.target_qps = {args.target_qps}")
    if args.min_query_count is not None:
        lines.append(f"{key}.min_query_count = {args.min_query_count}")
    return lines


def pct_waste(real: int, slots: int) -> float:
    return 100.0 * (1 - real / slots) if slots else 0.0


def throughput_metrics(outcome: harness_run.RunOutcome, setup_s: float) -> ThroughputMetrics:
    sink = outcome.sut.sink
    samples_key, tokens_key = LOADGEN_THROUGHPUT_KEYS[outcome.config.scenario]
    return ThroughputMetrics(
        completed_samples=sink.completed, output_tokens=sink.output_tokens, wall_s=outcome.wall_seconds,
        setup_s=setup_s, samples_per_s=sink.completed / outcome.wall_seconds,
        output_tokens_per_s=sink.output_tokens / outcome.wall_seconds,
        loadgen_samples_per_s=float(outcome.detail.get(samples_key, 0.0)),
        loadgen_tokens_per_s=float(outcome.detail.get(tokens_key, 0.0)),
        harness_s=sink.harness_seconds,
    )


def engine_time_metrics(outcome: harness_run.RunOutcome) -> EngineTimeMetrics:
    backend_s = outcome.sut.backend_seconds
    harness_s = outcome.sut.sink.harness_seconds
    return EngineTimeMetrics(engine_s=backend_s - harness_s, harness_share_pct=100.0 * harness_s / backend_s
                             if backend_s else 0.0)


def padding_metrics(stats: list[PaddingStats]) -> PaddingMetrics:
    return PaddingMetrics(
        prompt_padding_waste_pct=pct_waste(sum(s.prompt_tokens for s in stats), sum(s.prompt_slots for s in stats)),
        generated_padding_waste_pct=pct_waste(sum(s.generated_tokens for s in stats),
                                              sum(s.generated_slots for s in stats)),
    )


def memory_metrics() -> dict[str, float]:
    figures = asdict(MemoryMetrics(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    torch = sys.modules.get("torch")  # only when a backend loaded it: no CUDA start-up for nothing
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_max_memory_allocated_mb"] = sum(
            torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
    return figures


def server_latency_metrics(detail: dict[str, Any]) -> ServerLatencyMetrics:
    missing = [key for key in LATENCY_KEYS.values() if key not in detail]
    if missing:
        raise RuntimeError(f"the detail log lacks {', '.join(missing)}: did loadgen finish the test?")
    return ServerLatencyMetrics(target_qps=float(detail.get("effective_target_qps", 0.0)),
                                **{ours: detail[theirs] / NS_PER_MS for ours, theirs in LATENCY_KEYS.items()})


def collect_metrics(outcome: harness_run.RunOutcome, setup_s: float) -> dict[str, Any]:
    """Pure over the finished run: every figure, flat, units in the key names."""
    figures: dict[str, Any] = asdict(throughput_metrics(outcome, setup_s))
    if outcome.config.scenario == "Offline":
        figures.update(asdict(engine_time_metrics(outcome)))
    else:
        figures.update(asdict(server_latency_metrics(outcome.detail)))
    stats = [backend.stats() for backend in outcome.backends]
    padding = [s.padding for s in stats if s.padding is not None]
    if padding and len(padding) == len(stats):
        figures.update(asdict(padding_metrics(padding)))
    spread = [s.requests_per_server for s in stats if s.requests_per_server is not None]
    if spread and len(spread) == len(stats):  # the OpenAI backend: how the load was spread
        figures["requests_per_server"] = dict(sum((Counter(counts) for counts in spread), Counter()))
    figures["result_validity"] = str(outcome.detail.get("result_validity", "missing"))
    figures["num_errors"] = int(outcome.detail.get("num_errors", -1))
    return figures


def run_metadata(demo: bool) -> dict[str, Any]:
    return {"tool": "benchmark", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "demo": demo,
            "host": platform.node(), "python": platform.python_version(),
            "loadgen": metadata.version("mlcommons-loadgen")}


def config_echo(config: harness_run.RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    echo = {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()}
    echo.update(user_conf=str(base_user_conf(args)), user_conf_overrides=conf_overrides(args),
                output_json=str(args.output_json) if args.output_json else None,
                plot=str(args.plot) if args.plot else None)
    return echo


def run_benchmark(args: argparse.Namespace) -> tuple[harness_run.RunOutcome, float]:
    """One test through harness.run.execute with the overridden user.conf (which builds the
    backends and closes them whatever happens to the test); (outcome, setup seconds)."""
    with tempfile.TemporaryDirectory(prefix="benchmark-conf-") as tmp:
        conf = Path(tmp) / "user.conf"
        conf.write_text(base_user_conf(args).read_text() + "\n# tools/benchmark.py\n"
                        + "".join(line + "\n" for line in conf_overrides(args)))
        config = harness_run.config_from_args(argparse.Namespace(**dict(vars(args), user_conf=conf)))
        started = time.perf_counter()
        outcome = harness_run.execute(config)
        setup_s = time.perf_counter() - started - outcome.wall_seconds
    return outcome, setup_s


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    if not base_user_conf(args).is_file():
        raise SystemExit(f"--user-conf {base_user_conf(args)}: file not found")
    outcome, setup_s = run_benchmark(args)
    results = {**run_metadata(outcome.demo), "config": config_echo(outcome.config, args),
               "log_dir": str(outcome.config.output_log_dir.resolve()),
               "failure": outcome.sut.failure or (None if outcome.workers_ended else "a worker did not stop"),
               **collect_metrics(outcome, setup_s), **memory_metrics()}
    if args.plot is not None:
        from tools.plot_latency import describe, draw, latency_curves

        draw(latency_curves(outcome.detail), describe(outcome.detail), args.plot)
    return results


TABLE_ROWS = (  # (key, label, format); rows whose key a run lacks are left out
    ("completed_samples", "Samples completed", "{:d}"),
    ("wall_s", "Wall time (s)", "{:.2f}"),
    ("setup_s", "Setup: load/start (s)", "{:.2f}"),
    ("samples_per_s", "Samples/s", "{:.3f}"),
    ("output_tokens_per_s", "Output tokens/s", "{:.1f}"),
    ("loadgen_samples_per_s", "loadgen samples/s", "{:.3f}"),
    ("loadgen_tokens_per_s", "loadgen tokens/s", "{:.1f}"),
    ("engine_s", "Engine time (s)", "{:.2f}"),
    ("harness_s", "Harness time (s)", "{:.3f}"),
    ("harness_share_pct", "Harness share (%)", "{:.2f}"),
    ("prompt_padding_waste_pct", "Prompt padding waste (%)", "{:.1f}"),
    ("generated_padding_waste_pct", "Generated padding waste (%)", "{:.1f}"),
    ("requests_per_server", "Requests per server", "{}"),
    ("peak_rss_mb", "Peak RSS (MB)", "{:.0f}"),
    ("cuda_max_memory_allocated_mb", "CUDA max allocated (MB)", "{:.0f}"),
    ("target_qps", "Target QPS", "{:g}"),
    ("p50_ttft_ms", "TTFT p50 (ms)", "{:.2f}"),
    ("p99_ttft_ms", "TTFT p99 (ms)", "{:.2f}"),
    ("max_ttft_ms", "TTFT max (ms)", "{:.2f}"),
    ("p50_tpot_ms", "TPOT p50 (ms)", "{:.3f}"),
    ("p99_tpot_ms", "TPOT p99 (ms)", "{:.3f}"),
    ("p50_latency_ms", "Query latency p50 (ms)", "{:.1f}"),
    ("p99_latency_ms", "Query latency p99 (ms)", "{:.1f}"),
    ("result_validity", "Result", "{}"),
    ("num_errors", "loadgen errors", "{:d}"),
    ("failure", "Failure", "{}"),
)


def render_table(results: dict[str, Any]) -> str:
    """The printed report, from the same dict as the JSON."""
    config = results["config"]
    lines = [f"{config['scenario']} on {config['backend']} ({'demo' if results['demo'] else config['model_path']}),"
             f" logs in {results['log_dir']}"]
    for key, label, fmt in TABLE_ROWS:
        if results.get(key) is not None:
            lines.append(f"  {label:<30}{fmt.format(results[key])}")
    if results["demo"]:
        lines.append("  (demo figures: a tiny model, not Mixtral-8x7B)")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = main(build_parser().parse_args(argv))
    except harness_run.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return harness_run.EXIT_BAD_INPUT
    emit_results(results, render_table(results))
    return harness_run.EXIT_FAILED_RUN if results["failure"] else 0


if __name__ == "__main__":
    sys.exit(cli())
