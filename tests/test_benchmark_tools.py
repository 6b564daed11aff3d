"""tools/benchmark.py, tools/plot_latency.py, tools/harness_bench.py and tools/server_sweep.py: each run for
real, quickly; tools/vllm_parallel_bench.py's flags."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_helpers import ROOT
from tools import benchmark, plot_latency, vllm_parallel_bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON_KEYS = (
    "completed_samples", "output_tokens", "wall_s", "setup_s", "samples_per_s", "output_tokens_per_s",
    "loadgen_samples_per_s", "loadgen_tokens_per_s", "harness_s", "peak_rss_mb", "num_errors",
)
PADDING_KEYS = ("prompt_padding_waste_pct", "generated_padding_waste_pct")  # static batches only
OFFLINE_KEYS = (*COMMON_KEYS, *PADDING_KEYS, "engine_s", "harness_share_pct")
SERVER_KEYS = (*COMMON_KEYS, "target_qps", "p50_ttft_ms", "p99_ttft_ms", "max_ttft_ms", "p50_tpot_ms",
               "p99_tpot_ms", "p50_latency_ms", "p99_latency_ms")
LOAD_KEYS = ("synth_dataset_s", "dataset_load_s", "qsl_construct_ms", "rss_before_load_mb", "rss_after_load_mb",
             "dataset_rss_growth_mb", "load_peak_rss_mb")
RUN_KEYS = ("completed_samples", "wall_s", "samples_per_s", "loadgen_calls", "loadgen_calls_per_s",
            "harness_us_per_sample", "rss_before_run_mb", "peak_rss_mb", "rss_growth_mb", "num_errors")


def run_tool(module: str, *flags: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A tool in its own process (a loadgen fault must not kill pytest), from a scratch folder."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_numeric(results: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert key in results, f"{key} missing"
        assert isinstance(results[key], int | float) and not isinstance(results[key], bool), f"{key}: {results[key]!r}"


def run_benchmark(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "results.json"
    result = run_tool("tools.benchmark", "--total-sample-count", "12", "--batch-size", "4",
                      "--output-log-dir", str(tmp_path / "logs"), "--output-json", str(out), *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Samples/s" in result.stdout, "the table is printed"
    return json.loads(out.read_text())


def test_benchmark_offline_reports_every_figure(tmp_path, demo_assets):
    results = run_benchmark(tmp_path, "--scenario", "Offline", "--batching", "static")
    assert_numeric(results, OFFLINE_KEYS)
    assert results["completed_samples"] == 12
    assert results["result_validity"] == "VALID"
    assert results["failure"] is None
    assert results["demo"] is True
    assert results["config"]["scenario"] == "Offline"


def test_benchmark_server_reports_latencies_and_plot(tmp_path, demo_assets):
    png = tmp_path / "server.png"
    results = run_benchmark(tmp_path, "--scenario", "Server", "--target-qps", "20", "--min-query-count", "12",
                            "--plot", str(png))
    assert_numeric(results, SERVER_KEYS)
    assert results["target_qps"] == 20
    assert results["config"]["user_conf_overrides"] == ["mixtral-8x7b.Server.target_qps = 20.0",
                                                        "mixtral-8x7b.Server.min_query_count = 12"]
    assert results["result_validity"] in ("VALID", "INVALID")  # 12 queries are too few for early stopping
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert not set(PADDING_KEYS) & set(results), "in-flight batching pads nothing"


def test_server_sweep_runs_each_rate(tmp_path, demo_assets):
    out = tmp_path / "sweep.json"
    result = run_tool("tools.server_sweep", "--qps", "16,8", "--output-json", str(out), "--",
                      "--total-sample-count", "12", "--min-query-count", "12", cwd=tmp_path)
    results = json.loads(out.read_text())
    assert [run["target_qps"] for run in results["runs"]] == [8, 16]
    for run in results["runs"]:
        assert run["result_validity"] in ("VALID", "INVALID"), run
        assert run["num_errors"] == 0 and run["failure"] is None
        assert_numeric(run, ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "wall_s"))
    valid = [run["target_qps"] for run in results["runs"] if run["result_validity"] == "VALID"]
    assert results["highest_valid_qps"] == max(valid, default=None)
    assert result.returncode == (0 if valid else 1)
    assert "highest VALID rate" in result.stdout


def detail_line(key: str, value: object) -> str:
    record = {"key": key, "value": value, "metadata": {"is_error": False}}
    return ":::MLLOG " + json.dumps(record)


def test_plot_latency_writes_a_png_from_a_detail_log(tmp_path):
    percentiles = ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90")
    lines = [detail_line("effective_scenario", "Server"), detail_line("result_validity", "VALID"),
             detail_line("requested_server_ttft_latency", 2_000_000_000)]
    for k, p in enumerate(percentiles, start=1):
        lines += [detail_line(f"result_first_token_{p}_percentile_latency_ns", k * 100_000_000),
                  detail_line(f"result_time_per_output_token_{p}_percentile_ns", k * 10_000_000),
                  detail_line(f"result_{p}_percentile_latency_ns", k * 1_000_000_000)]
    log = tmp_path / "mlperf_log_detail.txt"
    log.write_text("\n".join(lines) + "\n")
    png = tmp_path / "latency.png"
    results = plot_latency.main(argparse.Namespace(detail_log=log, output=png))
    assert png.stat().st_size > 0 and png.read_bytes().startswith(PNG_MAGIC)
    assert results["curves"]["Time to first token"]["points_ms"][0] == (50.0, 100.0)
    assert results["curves"]["Time to first token"]["target_ms"] == 2000.0
    assert results["curves"]["Query latency"]["points_ms"][-1] == (99.9, 6000.0)


def test_plot_latency_refuses_a_log_without_percentiles(tmp_path):
    log = tmp_path / "mlperf_log_detail.txt"
    log.write_text(detail_line("effective_scenario", "Offline") + "\n")
    with pytest.raises(SystemExit, match="no latency percentiles"):
        plot_latency.main(argparse.Namespace(detail_log=log, output=tmp_path / "x.png"))


@pytest.mark.parametrize(("flags", "message"), [
    (["--scenario", "Offline", "--target-qps", "2"], "--target-qps sets the Server query rate"),
    (["--scenario", "Server", "--target-qps", "0"], "--target-qps must be positive"),
    (["--min-query-count", "0"], "--min-query-count must be at least 1"),
    (["--accuracy"], "--accuracy"),
    (["--plot", "x.png"], "--plot draws Server latencies"),
])
def test_benchmark_flag_errors_name_the_flag(flags, message):
    with pytest.raises(SystemExit, match=message):
        benchmark.validate_args(benchmark.build_parser().parse_args(flags))


@pytest.mark.quick
@pytest.mark.parametrize(("paths", "message"), [
    ("vllm,vllm-tp3", "--paths 'vllm,vllm-tp3': expected some of vllm, vllm-tp2,"),
    (",", "--paths ',': expected some of"),
])
def test_vllm_parallel_bench_refuses_an_unknown_path(paths, message):
    with pytest.raises(SystemExit, match=message):
        vllm_parallel_bench.validate_args(vllm_parallel_bench.build_parser().parse_args(["--paths", paths]))


def test_harness_bench_reports_every_figure(tmp_path):
    out = tmp_path / "harness.json"
    result = run_tool("tools.harness_bench", "--rows", "500", "--work-dir", str(tmp_path), "--output-json", str(out),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert_numeric(results["load"], LOAD_KEYS)
    modes = [(run["scenario"], run["accuracy"]) for run in results["runs"]]
    assert modes == [("Offline", False), ("Offline", True), ("Server", False), ("Server", True)]
    for run in results["runs"]:
        assert_numeric(run, RUN_KEYS)
        assert run["completed_samples"] == 500
        assert run["num_errors"] == 0
