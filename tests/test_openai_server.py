"""The OpenAI backend against real `vllm serve` processes of the demo model (one for the module,
a second, tensor parallel 2, for the two-server run and the mid-run kill): in-process generate/serve/abort, loadgen
runs of main.py, and its failures (an unreachable server, a wrong model name or key, a server
without token ids, an HTTP error, a stream cut short, a server killed mid-run, then --resume)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataset import MixtralDataset
from harness.backends import openai_api
from harness.backends.openai_api import build_openai_backend
from harness.backends.openai_client import completion_body
from harness.backends.protocol import MAX_NEW_TOKENS, GenerationRequest
from harness.postprocess import cut_after_stop
from tests.fake_openai_servers import (
    API_KEY,
    MODEL_NAME,
    FaultyProxy,
    completion_posts,
    demo_server,
    metric,
    settled_metric,
)
from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, detail, ids_of, run_main
from tests.serve_checks import LEFT_OVER, serve_in_two_waves
from tests.test_benchmark_tools import run_benchmark
from tests.test_harness_failures import assert_one_line_error
from tools.process_group import free_port

pytest.importorskip("vllm")
pytest.importorskip("aiohttp")

QUICK = 120  # seconds: a failure must end well within this (the watchdog's default is an hour)
# Short runs that still load the servers: Server queries arrive faster than the demo's 2 QPS, and
# Server performance runs stop at 100 queries (the figures are not what these tests check).
FAST_CONF = (ROOT / "user-demo.conf").read_text() + "".join(
    f"mixtral-8x7b.Server.{key}\n" for key in ("target_qps = 20", "min_query_count = 100"))
# Requests the server ran to their max_tokens: one the harness stopped reading is dropped instead.
RAN_TO_THE_END = ("vllm:request_success_total", 'finished_reason="length"')
SLOW_SERVER_CONF = (ROOT / "user-demo.conf").read_text() + "mixtral-8x7b.Server.target_qps = 4\n"


@pytest.fixture(scope="module", autouse=True)
def api_key():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", API_KEY)
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_assets):
    with demo_server(demo_assets.model_dir, tmp_path_factory.mktemp("vllm") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def second_server(tmp_path_factory, demo_assets):
    """Tensor parallel 2, for the two-server run, then killed by the mid-run failure test."""
    with demo_server(demo_assets.model_dir, tmp_path_factory.mktemp("vllm2") / "server.log",
                     tensor_parallel_size=2) as running:
        yield running


@pytest.fixture(scope="module")
def confs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conf")
    (folder / "fast.conf").write_text(FAST_CONF)
    (folder / "slow.conf").write_text(SLOW_SERVER_CONF)
    return {"fast": str(folder / "fast.conf"), "slow": str(folder / "slow.conf")}


def run_openai(*flags: str, servers, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    api = [flag for server in servers for flag in ("--api-server", server.url if hasattr(server, "url") else server)]
    return run_main("--backend", "openai", *api, *flags, cwd=cwd, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert API_KEY not in result.stdout + result.stderr


def test_offline_accuracy_log_equals_the_hf_backend(tmp_path, server, hf_offline_answers):
    result = run_openai("--scenario", "Offline", "--accuracy", "--output-log-dir", str(tmp_path), servers=[server],
                        cwd=tmp_path)
    assert_ok(result)
    assert answers_by_index(tmp_path) == hf_offline_answers
    assert all(e["token_count"] == len(ids_of(e["data"])) for e in accuracy_entries(tmp_path))
    assert not any(API_KEY in path.read_text(errors="replace") for path in tmp_path.iterdir() if path.is_file())


def test_server_accuracy_log_equals_the_hf_backend_with_first_tokens(tmp_path, server, hf_offline_answers, confs):
    result = run_openai("--scenario", "Server", "--accuracy", "--user-conf", confs["fast"], "--output-log-dir",
                        str(tmp_path), servers=[server], cwd=tmp_path)
    assert_ok(result)
    assert answers_by_index(tmp_path) == hf_offline_answers
    for entry in accuracy_entries(tmp_path):
        assert ids_of(entry["token_data"]) == ids_of(entry["data"])[:1]


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_performance_run_has_no_loadgen_errors(tmp_path, server, confs, scenario):
    result = run_openai("--scenario", scenario, "--user-conf", confs["fast"], "--output-log-dir", str(tmp_path),
                        servers=[server], cwd=tmp_path)
    assert_ok(result)
    figures = detail(tmp_path)
    assert figures["num_errors"] == 0
    assert figures["result_validity"] in ("VALID", "INVALID")  # a verdict exists; its value is timing


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_test06_passes_our_verifier(tmp_path, server, confs, scenario):
    run_dir = tmp_path / "run"
    result = run_openai("--scenario", scenario, "--user-conf", confs["fast"], "--output-log-dir", str(run_dir),
                        "--audit-conf", str(ROOT / "compliance/TEST06/audit.config"), servers=[server], cwd=tmp_path)
    assert_ok(result)
    verify = subprocess.run([sys.executable, str(ROOT / "compliance/TEST06/run_verification.py"), "-c", str(run_dir),
                             "-o", str(tmp_path / "verify"), "-s", scenario], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "TEST06 verification complete" in (tmp_path / "verify" / "TEST06" / "verify_accuracy.txt").read_text()


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_two_servers_both_receive_queries(tmp_path, server, second_server, confs, hf_offline_answers, scenario):
    """One plain server and one tensor parallel 2: each gets a share, every answer is one engine's."""
    assert "tensor_parallel_size=2" in second_server.log_text()
    before = [completion_posts(server), completion_posts(second_server)]
    result = run_openai("--scenario", scenario, "--accuracy", "--user-conf", confs["fast"], "--output-log-dir",
                        str(tmp_path), servers=[server, second_server], cwd=tmp_path)
    assert_ok(result)
    sent = [completion_posts(server) - before[0], completion_posts(second_server) - before[1]]
    # 36 samples + one start-up check each. Offline hands all at once, least-busy first; Server's
    # arrivals go to whichever server is free then, and a slower one may get only a few.
    assert all(count >= (10 if scenario == "Offline" else 2) for count in sent), sent
    assert sum(sent) == len(hf_offline_answers) + 2
    assert answers_by_index(tmp_path) == hf_offline_answers


# --- the backend in-process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(server):
    return build_openai_backend([server.url])


@pytest.fixture(scope="module")
def requests_(demo_assets):
    dataset = MixtralDataset(demo_assets.dataset_path)
    return [dataset.request(i, i + 1) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def answers(backend, requests_):
    return backend.generate(requests_)


def test_the_default_model_is_the_one_served(backend):
    assert backend.model == MODEL_NAME
    assert backend.api_servers[0].max_model_len == 3072


@pytest.fixture
def endless_answers(monkeypatch):
    """Requests that ignore EOS (which the body's stop_token_ids names too): each runs to its 1,024
    tokens unless the server aborts it, so that what a test reads of the server's token count
    leaves a margin no machine load can use up."""
    def endless(*args, **kwargs):
        return completion_body(*args, **kwargs) | {"ignore_eos": True, "stop_token_ids": []}

    monkeypatch.setattr(openai_api, "completion_body", endless)


def test_generation_stops_at_the_first_stop_occurrence_on_the_server_too(backend, requests_, answers,
                                                                         endless_answers):
    """A 4-gram the longest answer is known to produce, used as its stop ids: the answer is cut
    right after it, out of a request that, ignoring EOS, runs to 1,024 tokens. (That the stream is
    closed there, so the server can drop the request, test_openai_backend.py checks against a
    server that waits for the close: a real one may finish first when this client lags.)"""
    row = max(range(len(requests_)), key=lambda i: len(answers[i]))
    free = answers[row]
    stop = tuple(free[3:7])
    (stopped,) = backend.generate([GenerationRequest(row, requests_[row].input_ids, stop, query_id=1)])
    assert stopped == cut_after_stop(free, stop)
    (unstopped,) = backend.generate([GenerationRequest(row, requests_[row].input_ids, query_id=2)])
    assert len(unstopped) == MAX_NEW_TOKENS and unstopped[:len(stopped)] == stopped


def test_serve_streams_first_tokens_on_the_completing_thread(backend, requests_, answers):
    first, done, arrivals = serve_in_two_waves(backend, requests_)

    assert sorted(done) == sorted(first) == [r.qsl_index for r in requests_]
    for index, (ids, thread) in done.items():
        assert ids == answers[index]
        assert first[index] == (ids[0], thread) and thread == threading.get_ident()
    assert arrivals.get_nowait() == LEFT_OVER


def test_abort_returns_promptly_and_the_server_drops_the_requests(server, requests_, endless_answers):
    backend = build_openai_backend([server.url])  # an aborted backend is not used again
    arrivals: queue.Queue = queue.Queue()
    for request in requests_:
        arrivals.put(request)  # no None: only abort() can end this serve loop
    first_token, aborted, done = threading.Event(), threading.Event(), []

    def on_first_token(request, token):
        # Hold the stream (this callback runs on it) until abort() has been called: however late a
        # loaded machine runs the aborting thread, no answer can reach its 1,024 tokens before.
        first_token.set()
        aborted.wait(QUICK)

    def abort_at_the_first_token():
        first_token.wait(QUICK)
        backend.abort()
        aborted.set()

    aborter = threading.Thread(target=abort_at_the_first_token)
    serving = threading.Thread(target=backend.serve,
                               args=(arrivals, on_first_token, lambda r, ids: done.append(r.qsl_index)))
    before = settled_metric(server, *RAN_TO_THE_END)
    aborter.start()
    serving.start()
    serving.join(QUICK)  # without abort() this serve loop would never return
    first_token.set()
    aborter.join()
    assert not serving.is_alive()
    assert done == []  # nothing is handed over after abort(), however much the stream had read
    deadline = time.monotonic() + QUICK  # only catches a server that never drops them
    while metric(server, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "vllm:num_requests_running") == 0
    # Left alone, the server runs every request to its 1,024 tokens. A loaded machine may let it
    # finish the first ones sent before the harness even reads a first token, but not all of them.
    finished = settled_metric(server, *RAN_TO_THE_END) - before
    assert finished < len(requests_)  # the server dropped the others when their streams closed


def test_a_failing_handler_fails_the_call_with_its_own_error(server, requests_):
    backend = build_openai_backend([server.url])

    def fail(request, token):
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        backend.generate(requests_[:3], on_first_token=fail)
    assert backend.generate(requests_[:1])[0]  # the backend is usable again


# --- failures --------------------------------------------------------------------------------


def quick_run(*flags: str, servers, cwd) -> subprocess.CompletedProcess:
    return run_openai(*flags, servers=servers, cwd=cwd, timeout=QUICK)


def test_an_unreachable_server_is_bad_input(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = quick_run("--output-log-dir", str(tmp_path), servers=[url], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, f"server {url}/v1", "cannot connect")


def test_a_wrong_model_name_is_bad_input(tmp_path, server):
    result = quick_run("--api-model-name", "mixtral", "--output-log-dir", str(tmp_path), servers=[server],
                          cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, server.url, "does not serve model 'mixtral'", "'demo'")


def test_a_missing_api_key_is_bad_input(tmp_path, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    result = quick_run("--output-log-dir", str(tmp_path), servers=[server], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, server.url, "HTTP 401", "OPENAI_API_KEY")


def test_a_server_without_token_ids_is_refused_at_start(tmp_path, server):
    with FaultyProxy(server.url, strip_token_ids=True) as proxy:
        result = quick_run("--output-log-dir", str(tmp_path), servers=[proxy.url], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, proxy.url, "does not return token ids")


def test_a_server_that_does_not_stream_is_refused_at_start(tmp_path, server):
    with FaultyProxy(server.url, ignore_stream=True) as proxy:
        result = quick_run("--output-log-dir", str(tmp_path), servers=[proxy.url], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, proxy.url, "application/json instead of a stream")


def assert_failed_run(result: subprocess.CompletedProcess, log_dir, *fragments: str) -> None:
    """Exit 1, ending with one line that names what happened; every sample answered exactly once."""
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in ("error: the run failed", *fragments):
        assert fragment in last, last
    indices = [entry["qsl_idx"] for entry in accuracy_entries(log_dir)]
    assert sorted(indices) == list(range(36))


def test_an_http_error_mid_run_fails_the_run(tmp_path, server):
    with FaultyProxy(server.url, fail_completion=5) as proxy:  # the 1st is the start-up check
        result = quick_run("--scenario", "Offline", "--accuracy", "--output-log-dir", str(tmp_path),
                                    servers=[proxy.url], cwd=tmp_path)
    assert_failed_run(result, tmp_path, f"server {proxy.url}/v1", "HTTP 500", "injected failure")


def test_a_stream_cut_short_fails_the_run(tmp_path, server):
    with FaultyProxy(server.url, cut_after_events=50) as proxy:
        result = quick_run("--scenario", "Offline", "--accuracy", "--output-log-dir", str(tmp_path),
                                    servers=[proxy.url], cwd=tmp_path)
    assert_failed_run(result, tmp_path, f"server {proxy.url}/v1", "cut short")


def test_a_server_killed_mid_run_fails_it_and_resume_completes_it(tmp_path, server, second_server, hf_offline_answers,
                                                                  confs):
    """Server scenario at 4 QPS: the queries keep coming while the server dies."""
    posts_before = completion_posts(second_server)

    def kill_after_a_few_queries():
        while completion_posts(second_server) < posts_before + 4 and second_server.alive():
            time.sleep(0.02)
        second_server.kill()

    killer = threading.Thread(target=kill_after_a_few_queries)
    killer.start()
    try:
        result = quick_run("--scenario", "Server", "--accuracy", "--user-conf", confs["slow"],
                                    "--output-log-dir", str(tmp_path), servers=[second_server], cwd=tmp_path)
    finally:
        killer.join()
    assert_failed_run(result, tmp_path, f"server {second_server.url}/v1")

    resumed = run_openai("--scenario", "Offline", "--accuracy", "--resume", "--output-log-dir", str(tmp_path),
                         servers=[server], cwd=tmp_path)
    assert_ok(resumed)
    assert answers_by_index(tmp_path) == hf_offline_answers


def test_benchmark_reports_the_openai_backend(tmp_path, server):
    results = run_benchmark(tmp_path, "--scenario", "Offline", "--backend", "openai", "--api-server", server.url)
    assert results["completed_samples"] == 12 and results["num_errors"] == 0 and results["failure"] is None
    assert results["samples_per_s"] > 0 and results["output_tokens_per_s"] > 0 and results["engine_s"] > 0
    assert results["requests_per_server"] == {f"{server.url}/v1": 12}


def test_the_vllm_server_command_becomes_the_server(demo_assets):
    """`python -m tools.vllm_server` replaces itself with vLLM's server, so a signal to the process
    a user started reaches vLLM (a wrapper process, killed, left its server running)."""
    command = [sys.executable, "-m", "tools.vllm_server", "--model-path", str(demo_assets.model_dir), "--port",
               str(free_port())]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while b"vllm_serve.py" not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, "the command never became vLLM's server"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=120)
