"""Real loadgen runs of main.py on the demo assets (tiny trained Mixtral, sample set)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.backends.protocol import MBXP_STOP_IDS
from harness.postprocess import postprocess_output
from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, detail, ids_of, run_main

# Server tests that need no particular rate: 10 queries/s keep them short.
QUICK_SERVER_CONF = (ROOT / "user-demo.conf").read_text() + "mixtral-8x7b.Server.target_qps = 10\n"


@pytest.fixture(scope="module")
def quick_server_conf(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("conf") / "user.conf"
    path.write_text(QUICK_SERVER_CONF)
    return str(path)


def assert_clean_run(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def offline_accuracy(tmp_path_factory, demo_assets):
    """Static batches of 4 length-sorted prompts on two workers."""
    out = tmp_path_factory.mktemp("offline_acc")
    result = run_main("--scenario", "Offline", "--accuracy", "--batching", "static", "--batch-size", "4",
                      "--num-workers", "2", "--output-log-dir", str(out), cwd=out)
    assert_clean_run(result)
    return out


@pytest.fixture(scope="module")
def offline_inflight_accuracy(tmp_path_factory, demo_assets):
    """The default: in-flight batching."""
    out = tmp_path_factory.mktemp("offline_inflight_acc")
    assert_clean_run(run_main("--scenario", "Offline", "--accuracy", "--output-log-dir", str(out), cwd=out))
    return out


@pytest.fixture(scope="module", params=["inflight", "static"])
def server_accuracy(request, tmp_path_factory, demo_assets):
    out = tmp_path_factory.mktemp(f"server_acc_{request.param}")
    result = run_main("--scenario", "Server", "--accuracy", "--batching", request.param, "--batch-size", "4",
                      "--output-log-dir", str(out), cwd=out)
    assert_clean_run(result)
    return out


@pytest.fixture(scope="module")
def direct_answers(demo_assets):
    """Each row generated alone, unpadded, with transformers' own greedy generate."""
    frame = pd.read_pickle(demo_assets.dataset_path)
    model = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.float32).eval()
    answers = {}
    with torch.inference_mode():
        for index, row in frame.iterrows():
            prompt = torch.tensor([list(row["tok_input"])])
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 min_new_tokens=2, max_new_tokens=1024, eos_token_id=2, pad_token_id=2)
            stop = MBXP_STOP_IDS if row["dataset"] == "MBXP" else ()
            answers[index] = postprocess_output(out[0, prompt.shape[1]:].tolist(), stop)
    return answers


def test_offline_performance_run_is_valid(tmp_path, demo_assets):
    result = run_main("--scenario", "Offline", "--batch-size", "8", "--output-log-dir", str(tmp_path), cwd=tmp_path)
    assert_clean_run(result)
    figures = detail(tmp_path)
    assert figures["result_validity"] == "VALID"
    assert figures["num_errors"] == 0
    assert figures["result_tokens_per_second"] > 0
    assert "DEMO RUN" in result.stdout


@pytest.mark.parametrize("run", ["offline_accuracy", "offline_inflight_accuracy"])
def test_offline_accuracy_log_equals_direct_generate(run, request, direct_answers):
    entries = accuracy_entries(request.getfixturevalue(run))
    indices = [e["qsl_idx"] for e in entries]
    assert sorted(indices) == sorted(direct_answers), "every sample logged exactly once"
    for entry in entries:
        ids = ids_of(entry["data"])
        assert ids == direct_answers[entry["qsl_idx"]], f"sample {entry['qsl_idx']}"
        assert entry["token_count"] == len(ids)


def test_offline_accuracy_run_journals_every_answer(offline_accuracy):
    from harness.journal import read_journal

    assert read_journal(offline_accuracy / "run_outputs") == answers_by_index(offline_accuracy)


def test_mbxp_answers_end_at_the_stop_sequence(offline_accuracy, demo_assets):
    frame = pd.read_pickle(demo_assets.dataset_path)
    answers = answers_by_index(offline_accuracy)
    mbxp = [i for i in answers if frame.loc[i, "dataset"] == "MBXP"]
    ended = [i for i in mbxp if answers[i][-4:] == list(MBXP_STOP_IDS)]
    assert ended, "the demo model emits the MBXP stop sequence"
    for i in mbxp:
        tail = answers[i][:-4] if i in ended else answers[i]
        assert all(tail[k:k + 4] != list(MBXP_STOP_IDS) for k in range(len(tail))), f"sample {i} not cut"


def test_server_accuracy_reports_first_tokens_and_matches_offline(server_accuracy, offline_accuracy):
    entries = accuracy_entries(server_accuracy)
    assert len({e["qsl_idx"] for e in entries}) == len(entries)
    for entry in entries:
        assert ids_of(entry["token_data"]) == ids_of(entry["data"])[:1], f"sample {entry['qsl_idx']}"
    assert answers_by_index(server_accuracy) == answers_by_index(offline_accuracy)


@pytest.mark.parametrize("batching", ["inflight", "static"])
def test_server_performance_run_answers_every_query(tmp_path, demo_assets, batching):
    # Whether the latencies make the run VALID depends on the machine's load: tools/benchmark.py
    # measures that. What cannot depend on it: every query answered, first tokens, no loadgen error.
    conf = tmp_path / "user.conf"
    conf.write_text(QUICK_SERVER_CONF + "mixtral-8x7b.Server.min_query_count = 100\n")
    result = run_main("--scenario", "Server", "--batching", batching, "--batch-size", "8", "--user-conf", str(conf),
                      "--output-log-dir", str(tmp_path), cwd=tmp_path)
    assert_clean_run(result)
    figures = detail(tmp_path)
    assert figures["num_errors"] == 0, figures["errors"]
    assert figures["result_first_token_99.00_percentile_latency_ns"] > 0
    assert figures["result_time_per_output_token_99.00_percentile_ns"] > 0
    assert figures["result_query_count"] == figures["generated_query_count"] >= 100


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_test06_passes_our_verifier(tmp_path, demo_assets, quick_server_conf, scenario):
    run_dir = tmp_path / "run"
    result = run_main("--scenario", scenario, "--batch-size", "8", "--user-conf", quick_server_conf,
                      "--output-log-dir", str(run_dir), "--audit-conf", str(ROOT / "compliance/TEST06/audit.config"),
                      cwd=tmp_path)
    assert_clean_run(result)
    assert accuracy_entries(run_dir), "TEST06 logs responses"
    verify = subprocess.run([sys.executable, str(ROOT / "compliance/TEST06/run_verification.py"), "-c", str(run_dir),
                             "-o", str(tmp_path / "verify"), "-s", scenario], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = (tmp_path / "verify" / "TEST06" / "verify_accuracy.txt").read_text()
    assert "TEST06 verification complete" in report
    assert ("First token check pass: Skipped" if scenario == "Offline" else "First token check pass: True") in report


def test_stray_audit_config_is_ignored(tmp_path, demo_assets):
    (tmp_path / "audit.config").write_text((ROOT / "compliance/TEST06/audit.config").read_text())
    result = run_main("--scenario", "Offline", "--accuracy", "--batch-size", "8", "--output-log-dir",
                      str(tmp_path / "logs"), cwd=tmp_path)
    assert_clean_run(result)
    assert len(accuracy_entries(tmp_path / "logs")) == len(pd.read_pickle(demo_assets.dataset_path))


def test_length_sorted_batches_answer_like_issue_order(tmp_path, offline_accuracy):
    result = run_main("--scenario", "Offline", "--accuracy", "--batching", "static", "--batch-size", "4",
                      "--no-length-sort", "--output-log-dir", str(tmp_path), cwd=tmp_path)
    assert_clean_run(result)
    assert answers_by_index(tmp_path) == answers_by_index(offline_accuracy)


def test_explicit_mlperf_conf_keeps_the_official_seeds(tmp_path, demo_assets):
    plain, explicit = tmp_path / "plain", tmp_path / "explicit"
    conf = tmp_path / "mlperf.conf"
    conf.write_text((ROOT / "mlperf.conf").read_text() + "*.*.qsl_rng_seed = 1\n")
    for out, flags in ((plain, ()), (explicit, ("--mlperf-conf", str(conf)))):
        assert_clean_run(run_main("--scenario", "Offline", "--batch-size", "8", *flags, "--output-log-dir", str(out),
                                  cwd=tmp_path))
    seeds = ("effective_qsl_rng_seed", "effective_sample_index_rng_seed", "effective_schedule_rng_seed")
    assert [detail(explicit)[k] for k in seeds] == [detail(plain)[k] for k in seeds]
    assert detail(explicit)["effective_qsl_rng_seed"] != 1
