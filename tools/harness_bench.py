"""The harness alone at full scale: a synthetic 15,000-row dataset, a fake instant engine.

Measures what the harness costs apart from any model: dataset load, QSL construction, resident
memory, and how many samples per second the real SUTs push through loadgen when the engine
answers instantly (Offline and Server, performance and accuracy mode).

    python -m tools.harness_bench [--rows 15000] [--output-json harness.json]

Each loadgen run happens in a fresh process: loadgen applies its embedded mlperf.conf only on
the first settings load of a process, and a fresh process gives each run its own peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import queue
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.backends.protocol import BackendStats, DoneHandler, FirstTokenHandler, GenerationRequest
from tools.results_output import emit_results

log = logging.getLogger(__name__)

MODES = (("Offline", False), ("Offline", True), ("Server", False), ("Server", True))
FILLER_ID = 1000  # any id that is neither EOS nor part of the MBXP stop sequence


class InstantBackend:
    """A GenerationBackend that answers at once with a fixed answer of `answer_tokens` ids, so
    that every second measured is spent in the harness and loadgen."""

    continuous_batching = False

    def __init__(self, answer_tokens: int) -> None:
        self.answer = [FILLER_ID] * answer_tokens

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        for request in requests:
            if on_first_token is not None:
                on_first_token(request, self.answer[0])
            if on_done is not None:
                on_done(request, self.answer)
        return [self.answer for _ in requests]

    def warm_up(self) -> None:
        """An instant engine has nothing to warm."""

    def stats(self) -> BackendStats:
        return BackendStats()

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        while (request := requests.get()) is not None:
            on_first_token(request, self.answer[0])
            on_done(request, self.answer)


@dataclass(frozen=True)
class LoadMetrics:
    synth_dataset_s: float
    dataset_load_s: float
    qsl_construct_ms: float
    rss_before_load_mb: float
    rss_after_load_mb: float
    dataset_rss_growth_mb: float
    load_peak_rss_mb: float  # the unpickled frame (every column, lists of Python ints) before it is freed


@dataclass(frozen=True)
class RunMetrics:
    scenario: str
    accuracy: bool
    completed_samples: int
    wall_s: float
    samples_per_s: float
    loadgen_calls: int  # QuerySamplesComplete, plus FirstTokenComplete in Server
    loadgen_calls_per_s: float
    harness_us_per_sample: float  # post-processing, journal and loadgen calls
    rss_before_run_mb: float
    peak_rss_mb: float
    rss_growth_mb: float
    result_validity: str
    num_errors: int


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=15000, help="synthetic dataset rows (the real set has 15,000)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    parser.add_argument("--answer-tokens", type=int, default=145,
                        help="length of the fake engine's answer (the real set averages ~145 output tokens)")
    parser.add_argument("--server-qps", type=float, default=5000.0,
                        help="Server target_qps: far above what the harness sustains, to find its ceiling")
    parser.add_argument("--batch-size", type=int, default=32, help="Offline samples per generate call")
    parser.add_argument("--work-dir", type=Path,
                        help="folder for the dataset, confs and loadgen logs (default: a temporary one)")
    parser.add_argument("--output-json", type=Path, help="also write the results here (sorted keys)")


def validate_args(args: argparse.Namespace) -> None:
    for flag, value in (("--rows", args.rows), ("--batch-size", args.batch_size)):
        if value < 1:
            raise SystemExit(f"{flag} must be at least 1, got {value}")
    if args.answer_tokens < 2:
        raise SystemExit(f"--answer-tokens must be at least 2 (loadgen needs n_tokens > 1), got {args.answer_tokens}")
    if args.server_qps <= 0:
        raise SystemExit(f"--server-qps must be positive, got {args.server_qps}")
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise SystemExit(f"--work-dir {args.work_dir}: not a folder (create it or leave the flag out)")
    if args.output_json is not None and not args.output_json.parent.is_dir():
        raise SystemExit(f"--output-json {args.output_json}: folder {args.output_json.parent} does not exist")


def current_rss_mb() -> float:
    """Resident set size now, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def quick_user_conf(path: Path, rows: int, server_qps: float) -> Path:
    """Loadgen settings for one pass over the whole set: every sample once in Offline, `rows`
    queries in Server."""
    path.write_text("\n".join((
        f"mixtral-8x7b.*.performance_sample_count_override = {rows}",
        "mixtral-8x7b.Offline.min_duration = 0",
        f"mixtral-8x7b.Offline.min_query_count = {rows}",
        "mixtral-8x7b.Server.min_duration = 0",
        f"mixtral-8x7b.Server.min_query_count = {rows}",
        f"mixtral-8x7b.Server.target_qps = {server_qps}",
    )) + "\n")
    return path


def write_synth_dataset(path: Path, rows: int, seed: int) -> float:
    """Seconds spent generating and pickling the set."""
    from tools.synth_dataset import synth_frame

    started = time.perf_counter()
    synth_frame(rows, seed).to_pickle(path)
    return time.perf_counter() - started


def measure_load(dataset_path: Path) -> dict[str, float]:
    """In a fresh process: dataset load time, its RSS, and the cost of loadgen's QSL over it."""
    import mlperf_loadgen as lg

    from dataset import MixtralDataset

    before = current_rss_mb()
    started = time.perf_counter()
    dataset = MixtralDataset(dataset_path)
    load_s = time.perf_counter() - started
    after = current_rss_mb()
    started = time.perf_counter()
    qsl = lg.ConstructQSL(len(dataset), len(dataset), dataset.load_samples, dataset.unload_samples)
    qsl_ms = (time.perf_counter() - started) * 1000
    lg.DestroyQSL(qsl)
    return {"dataset_load_s": load_s, "qsl_construct_ms": qsl_ms, "rss_before_load_mb": before,
            "rss_after_load_mb": after, "dataset_rss_growth_mb": after - before, "load_peak_rss_mb": peak_rss_mb()}


@contextlib.contextmanager
def stdout_to_file(path: Path) -> Iterator[None]:
    """Send file descriptor 1 to `path`: loadgen copies its summary to the C++ stdout, which
    would bury the report under four summaries."""
    sys.stdout.flush()
    saved = os.dup(1)
    with path.open("w") as target:
        os.dup2(target.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_once(scenario: str, accuracy: bool, dataset_path: Path, user_conf: Path, log_dir: Path,
             batch_size: int, answer_tokens: int) -> RunMetrics:
    """In a fresh process: one loadgen test through harness.run.execute with the instant engine."""
    # Imported before the baseline so that RSS growth counts the run's data, not module code.
    import dataset  # noqa: F401
    import SUT  # noqa: F401
    from harness import run as harness_run

    args = harness_run.build_parser().parse_args([
        "--scenario", scenario, "--dataset-path", str(dataset_path), "--model-path", str(dataset_path.parent),
        "--user-conf", str(user_conf), "--output-log-dir", str(log_dir), "--batch-size", str(batch_size),
        *(["--accuracy"] if accuracy else []),
    ])
    log_dir.mkdir(parents=True, exist_ok=True)
    before = current_rss_mb()
    with stdout_to_file(log_dir / "stdout.txt"):
        outcome = harness_run.execute(harness_run.config_from_args(args),
                                       backends=[InstantBackend(answer_tokens)])
    sink = outcome.sut.sink
    calls = sink.completed * (2 if scenario == "Server" else 1)
    peak = peak_rss_mb()
    return RunMetrics(
        scenario=scenario, accuracy=accuracy, completed_samples=sink.completed, wall_s=outcome.wall_seconds,
        samples_per_s=sink.completed / outcome.wall_seconds, loadgen_calls=calls,
        loadgen_calls_per_s=calls / outcome.wall_seconds,
        harness_us_per_sample=sink.harness_seconds / max(sink.completed, 1) * 1e6,
        rss_before_run_mb=before, peak_rss_mb=peak, rss_growth_mb=peak - before,
        result_validity=str(outcome.detail.get("result_validity", "n/a (accuracy mode)")),
        num_errors=int(outcome.detail.get("num_errors", 0)),
    )


def fake_checkpoint(folder: Path) -> Path:
    """harness.run.validate wants a config.json in --model-path; the instant engine never reads it."""
    (folder / "config.json").write_text("{}\n")
    return folder


def run_all(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    dataset_path = fake_checkpoint(work_dir) / "synth.pkl"
    synth_s = write_synth_dataset(dataset_path, args.rows, args.seed)
    user_conf = quick_user_conf(work_dir / "user-bench.conf", args.rows, args.server_qps)
    # One task per process (max_tasks_per_child=1): a clean loadgen and a clean peak RSS each.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        load = LoadMetrics(synth_dataset_s=synth_s, **pool.submit(measure_load, dataset_path).result())
        runs = []
        for scenario, accuracy in tqdm(MODES, desc="loadgen runs", unit="run"):
            log_dir = work_dir / f"{scenario.lower()}-{'accuracy' if accuracy else 'performance'}"
            runs.append(pool.submit(run_once, scenario, accuracy, dataset_path, user_conf, log_dir,
                                    args.batch_size, args.answer_tokens).result())
    return {"load": asdict(load), "runs": [asdict(r) for r in runs]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.work_dir is not None:
        # A new folder per invocation: accuracy runs refuse a folder holding an earlier journal.
        measured = run_all(args, Path(tempfile.mkdtemp(prefix="harness-bench-", dir=args.work_dir)))
    else:
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            measured = run_all(args, Path(tmp))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"tool": "harness_bench", "date": started, "python": sys.version.split()[0], "config": config,
            **measured}


def render_table(results: dict[str, Any]) -> str:
    """The printed report, from the same dict as the JSON."""
    load = results["load"]
    lines = [f"Harness alone, {results['config']['rows']} rows, instant engine",
             f"  synthetic dataset written   {load['synth_dataset_s']:.1f} s",
             f"  dataset load (MixtralDataset) {load['dataset_load_s']:.2f} s, "
             f"RSS +{load['dataset_rss_growth_mb']:.0f} MB ({load['rss_after_load_mb']:.0f} MB after, "
             f"peak {load['load_peak_rss_mb']:.0f} MB while loading)",
             f"  QSL construction            {load['qsl_construct_ms']:.1f} ms", ""]
    header = f"{'run':<22}{'samples':>8}{'wall s':>8}{'samples/s':>11}{'calls/s':>10}{'us/sample':>11}" \
             f"{'peak RSS MB':>13}{'RSS +MB':>9}  result"
    lines.append(header)
    for run in results["runs"]:
        name = f"{run['scenario']} {'accuracy' if run['accuracy'] else 'performance'}"
        lines.append(f"{name:<22}{run['completed_samples']:>8}{run['wall_s']:>8.2f}{run['samples_per_s']:>11.0f}"
                     f"{run['loadgen_calls_per_s']:>10.0f}{run['harness_us_per_sample']:>11.1f}"
                     f"{run['peak_rss_mb']:>13.0f}{run['rss_growth_mb']:>9.0f}  {run['result_validity']}"
                     f" ({run['num_errors']} errors)")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(cli)
    results = main(cli.parse_args())
    emit_results(results, render_table(results))
