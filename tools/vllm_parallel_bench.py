"""Engine start and Offline throughput of each vLLM parallel path, on the demo.

In the harness's process (`--backend vllm`): one engine, tensor parallel 2, pipeline parallel 2,
two replicas. Behind `vllm serve` (`--backend openai`): two servers, one of them tensor parallel
2; and one engine across two nodes (node 0 serving, node 1 headless: vLLM's multiprocessing
executor). Each path is one tools.benchmark Offline run in its own process. Engine start is the
benchmark's setup time for an in-process engine (engine start and dataset load), and launch to
the last server's first answer for servers. On CPUs every worker is pinned to cores of its own,
as the harness pins its engines' workers.

    python -m tools.vllm_parallel_bench --output-json parallel.json [--paths vllm,vllm-tp2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.backends.vllm_engine import CPU_THREADS_BIND_ENV, cpu_thread_binds
from harness.demo.assets import ensure_demo_assets
from tools.benchmark_runs import run_benchmark_process
from tools.results_output import emit_results
from tools.vllm_server import running_two_node_engine, running_vllm_server

IN_PROCESS = {
    "vllm": (),
    "vllm-tp2": ("--tensor-parallel-size", "2"),
    "vllm-pp2": ("--pipeline-parallel-size", "2"),
    "vllm-replicas2": ("--replicas", "2"),
}
FIGURES = ("setup_s", "samples_per_s", "output_tokens_per_s", "completed_samples", "num_errors", "failure")


def pinned(workers: int) -> list[dict[str, str]]:
    """One environment per worker: its own share of this process's cores."""
    binds = cpu_thread_binds(sorted(os.sched_getaffinity(0)), 1, workers)
    return [{CPU_THREADS_BIND_ENV: bind} for bind in binds]


@contextlib.contextmanager
def two_servers(model_dir: Path, folder: Path) -> Iterator[list[str]]:
    """One server of one worker and one of tensor parallel 2, on cores of their own where there
    are enough (three workers share two cores here)."""
    one, tp_first, tp_second = pinned(3)
    tp = {CPU_THREADS_BIND_ENV: f"{tp_first[CPU_THREADS_BIND_ENV]}|{tp_second[CPU_THREADS_BIND_ENV]}"}
    with (running_vllm_server(model_dir, folder / "one.log", env=one) as first,
          running_vllm_server(model_dir, folder / "tp2.log", env=tp,
                              extra_args=("--tensor-parallel-size", "2")) as second):
        yield [first.url, second.url]


@contextlib.contextmanager
def two_nodes(model_dir: Path, folder: Path) -> Iterator[list[str]]:
    with running_two_node_engine(model_dir, folder) as (node0, _):
        yield [node0.url]


SERVED: dict[str, Callable[[Path, Path], contextlib.AbstractContextManager[list[str]]]] = {
    "openai-2-servers": two_servers,
    "openai-2-nodes": two_nodes,
}
PATHS = (*IN_PROCESS, *SERVED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--output-json", type=Path, help="write the results here (sorted keys)")
    return parser


def validate_args(args: argparse.Namespace) -> list[str]:
    paths = [path for path in args.paths.split(",") if path]
    unknown = [path for path in paths if path not in PATHS]
    if unknown or not paths:
        raise SystemExit(f"--paths {args.paths!r}: expected some of {', '.join(PATHS)}")
    if args.output_json is not None and not args.output_json.parent.is_dir():
        raise SystemExit(f"--output-json {args.output_json}: folder {args.output_json.parent} does not exist")
    return paths


def measure(path: str, model_dir: Path, folder: Path) -> dict[str, Any]:
    offline = ["--scenario", "Offline", "--output-log-dir", str(folder / path)]
    if path in IN_PROCESS:
        figures = run_benchmark_process([*offline, "--backend", "vllm", *IN_PROCESS[path]], folder / f"{path}.json")
        return {"path": path, "engine_start_s": figures.get("setup_s"), **{k: figures.get(k) for k in FIGURES}}
    launched = time.monotonic()
    with SERVED[path](model_dir, folder / f"{path}-servers") as urls:
        engine_start_s = time.monotonic() - launched
        api = [flag for url in urls for flag in ("--api-server", url)]
        figures = run_benchmark_process([*offline, "--backend", "openai", *api], folder / f"{path}.json")
    return {"path": path, "engine_start_s": engine_start_s, **{k: figures.get(k) for k in FIGURES}}


def main(args: argparse.Namespace) -> dict[str, Any]:
    paths = validate_args(args)
    model_dir = ensure_demo_assets().model_dir
    runs = []
    with tempfile.TemporaryDirectory(prefix="vllm-parallel-") as tmp:
        for path in paths:
            runs.append(measure(path, model_dir, Path(tmp)))
            print(f"{path}: {runs[-1]['failure'] or 'done'}", file=sys.stderr, flush=True)
    return {"tool": "vllm_parallel_bench", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cpus": len(os.sched_getaffinity(0)),
            "config": {"paths": paths, "output_json": str(args.output_json) if args.output_json else None},
            "runs": runs}


def render_table(results: dict[str, Any]) -> str:
    lines = [f"vLLM parallel paths, demo Offline, {results['cpus']} cores",
             f"{'path':<18} {'engine start s':>14} {'samples/s':>10} {'tokens/s':>10}"]
    for run in results["runs"]:
        figures = " ".join(f"{run[key]:>{width}.1f}" if run.get(key) is not None else f"{'-':>{width}}"
                           for key, width in (("engine_start_s", 14), ("samples_per_s", 10),
                                              ("output_tokens_per_s", 10)))
        lines.append(f"{run['path']:<18} {figures}" + (f"  {run['failure']}" if run.get("failure") else ""))
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    results = main(build_parser().parse_args(argv))
    emit_results(results, render_table(results))
    return 1 if any(run.get("failure") for run in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(cli())
