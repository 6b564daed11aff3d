"""Bad input, failing generation, stalls and a killed run: clear errors, no hang, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, run_main

QUICK = 120  # seconds: every failure here must end well within this


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def random_tiny_mixtral(folder, vocab_size: int) -> str:
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=64, num_local_experts=2,
                           num_experts_per_tok=1, bos_token_id=1, eos_token_id=2, max_position_embeddings=4096)
    MixtralForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_missing_dataset_file(tmp_path):
    missing = tmp_path / "nope.pkl"
    result = run_main("--dataset-path", str(missing), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(missing), "not found")


def test_dataset_with_wrong_columns(tmp_path, demo_assets):
    bad = tmp_path / "bad.pkl"
    pd.read_pickle(demo_assets.dataset_path).drop(columns=["tok_input"]).to_pickle(bad)
    result = run_main("--dataset-path", str(bad), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(bad), "tok_input")


def test_dataset_that_is_not_a_dataframe(tmp_path):
    bad = tmp_path / "list.pkl"
    pd.to_pickle([1, 2, 3], bad)
    result = run_main("--dataset-path", str(bad), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(bad), "DataFrame")


def test_non_integer_tokens(tmp_path, demo_assets):
    frame = pd.read_pickle(demo_assets.dataset_path)
    frame.at[3, "tok_input"] = ["a", "b"]
    bad = tmp_path / "tokens.pkl"
    frame.to_pickle(bad)
    result = run_main("--dataset-path", str(bad), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(bad), "row 3", "tok_input")


def test_missing_user_conf(tmp_path):
    missing = tmp_path / "user.conf"
    result = run_main("--user-conf", str(missing), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(missing), "--user-conf")


def test_bad_scenario(tmp_path):
    result = run_main("--scenario", "SingleStream", cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, "--scenario", "invalid choice")


def test_resume_needs_accuracy_mode(tmp_path):
    result = run_main("--resume", cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, "--resume")


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_generation_raising_in_a_worker_fails_the_run(tmp_path, demo_assets, scenario):
    # A real failure inside generate: prompt ids beyond this model's 1,000-row embedding.
    model = random_tiny_mixtral(tmp_path / "small_vocab", vocab_size=1000)
    started = time.monotonic()
    result = run_main("--scenario", scenario, "--accuracy", "--model-path", model, "--output-log-dir",
                      str(tmp_path / "logs"), cwd=tmp_path, timeout=QUICK)
    assert time.monotonic() - started < QUICK
    assert result.returncode == 1
    assert "error: the run failed: generation failed: IndexError" in result.stderr
    assert len(accuracy_entries(tmp_path / "logs")) == len(pd.read_pickle(demo_assets.dataset_path)), \
        "every sample completed"


def test_watchdog_ends_a_stalled_run(tmp_path, demo_assets):
    # A random model never says EOS: its batch runs to 1,024 tokens, far past a 1 s watchdog.
    model = random_tiny_mixtral(tmp_path / "random", vocab_size=32000)
    result = run_main("--model-path", model, "--batch-size", "64", "--watchdog-timeout", "1", "--output-log-dir",
                      str(tmp_path / "logs"), cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 1
    assert "watchdog" in result.stderr.strip().splitlines()[-1]


def test_earlier_outputs_are_not_overwritten_without_resume(tmp_path, demo_assets):
    journal = tmp_path / "logs" / "run_outputs"
    journal.mkdir(parents=True)
    (journal / "q0.pkl").write_bytes(b"kept")
    result = run_main("--accuracy", "--output-log-dir", str(tmp_path / "logs"), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(journal), "--resume")
    assert (journal / "q0.pkl").read_bytes() == b"kept"


def test_killed_accuracy_run_resumes_to_the_same_log(tmp_path, demo_assets):
    flags = ["--scenario", "Offline", "--accuracy", "--batch-size", "2"]
    full = tmp_path / "full"
    assert run_main(*flags, "--output-log-dir", str(full), cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *flags, "--output-log-dir", str(killed)],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while len(list((killed / "run_outputs").glob("q*.pkl"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    journaled = list((killed / "run_outputs").glob("q*.pkl"))
    rows = len(pd.read_pickle(demo_assets.dataset_path))
    assert 3 <= len(journaled) < rows // 2, "killed part-way"

    resumed = run_main(*flags, "--resume", "--output-log-dir", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert answers_by_index(killed) == answers_by_index(full)
    counts = {e["qsl_idx"]: e["token_count"] for e in accuracy_entries(killed)}
    assert counts == {e["qsl_idx"]: e["token_count"] for e in accuracy_entries(full)}


def test_malformed_user_conf(tmp_path, demo_assets):
    conf = tmp_path / "user.conf"
    conf.write_text("mixtral-8x7b.Offline.min_query_count = many\n")
    result = run_main("--user-conf", str(conf), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(conf), "malformed")
