"""Bad input, failing generation, stalls and a killed run: clear errors, no hang, nothing lost."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness.journal import read_journal
from tests.run_helpers import ROOT, accuracy_entries, answers_by_index, random_tiny_mixtral, run_main

QUICK = 120  # seconds: every failure here must end well within this


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.quick
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


@pytest.mark.quick
def test_missing_user_conf(tmp_path):
    missing = tmp_path / "user.conf"
    result = run_main("--user-conf", str(missing), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(missing), "--user-conf")


@pytest.mark.quick
def test_bad_scenario(tmp_path):
    result = run_main("--scenario", "SingleStream", cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, "--scenario", "invalid choice")


@pytest.mark.quick
def test_resume_needs_accuracy_mode(tmp_path):
    result = run_main("--resume", cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, "--resume")


@pytest.mark.parametrize("scenario, batching", [("Offline", "static"), ("Offline", "inflight"), ("Server", "inflight")])
def test_generation_raising_in_a_worker_fails_the_run(tmp_path, demo_assets, scenario, batching):
    # A real failure inside generate: prompt ids beyond this model's 1,000-row embedding.
    model = random_tiny_mixtral(tmp_path / "small_vocab", vocab_size=1000)
    result = run_main("--scenario", scenario, "--accuracy", "--batching", batching, "--model-path", model,
                      "--output-log-dir", str(tmp_path / "logs"), cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 1
    assert "error: the run failed: generation failed: " in result.stderr
    assert "index out of range" in result.stderr.strip().splitlines()[-1]
    assert len(accuracy_entries(tmp_path / "logs")) == len(pd.read_pickle(demo_assets.dataset_path)), \
        "every sample completed"


def test_a_model_that_cannot_generate_fails_its_warm_up_in_one_line(tmp_path):
    # The warm-up prompt's ids lie beyond this model's 50-row embedding.
    model = random_tiny_mixtral(tmp_path / "tiny_vocab", vocab_size=50)
    result = run_main("--model-path", model, "--output-log-dir", str(tmp_path / "logs"), cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, "warm-up generation", "index out of range")
    assert not (tmp_path / "logs" / "mlperf_log_summary.txt").exists(), "no test was started"


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


# Static batches of 2 journal a file per batch: a run stopped part-way leaves several.
JOURNALED_RUN = ("--scenario", "Offline", "--accuracy", "--batching", "static", "--batch-size", "2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_assets):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(*JOURNALED_RUN, "--output-log-dir", str(out), cwd=out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def start_main(*flags: str, cwd) -> subprocess.Popen:
    """main.py in its own process group, as a terminal runs it (Ctrl-C reaches the whole group)."""
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *flags], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for_journal_files(folder, count: int) -> None:
    deadline = time.monotonic() + 600
    while len(list(folder.glob("q*.pkl"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def assert_resumes_to(flags: tuple[str, ...], out, uninterrupted) -> None:
    resumed = run_main(*flags, "--resume", "--output-log-dir", str(out), cwd=out.parent)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert answers_by_index(out) == answers_by_index(uninterrupted)
    counts = {e["qsl_idx"]: e["token_count"] for e in accuracy_entries(out)}
    assert counts == {e["qsl_idx"]: e["token_count"] for e in accuracy_entries(uninterrupted)}


def test_killed_accuracy_run_resumes_to_the_same_log(tmp_path, demo_assets, uninterrupted):
    killed = tmp_path / "killed"
    process = start_main(*JOURNALED_RUN, "--output-log-dir", str(killed), cwd=tmp_path)
    wait_for_journal_files(killed / "run_outputs", 3)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    journaled = list((killed / "run_outputs").glob("q*.pkl"))
    rows = len(pd.read_pickle(demo_assets.dataset_path))
    assert 3 <= len(journaled) < rows // 2, "killed part-way"
    assert_resumes_to(JOURNALED_RUN, killed, uninterrupted)


def test_ctrl_c_ends_the_run_cleanly_and_resume_completes_it(tmp_path, demo_assets, uninterrupted):
    stopped = tmp_path / "stopped"
    process = start_main(*JOURNALED_RUN, "--output-log-dir", str(stopped), cwd=tmp_path)
    wait_for_journal_files(stopped / "run_outputs", 2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=QUICK)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGINT: the run stopped early;") and "--resume continues" in last
    assert (stopped / "mlperf_log_summary.txt").is_file(), "loadgen ended its test and wrote its logs"
    journaled = read_journal(stopped / "run_outputs")
    assert 4 <= len(journaled) < len(pd.read_pickle(demo_assets.dataset_path)), "stopped part-way"
    full = answers_by_index(uninterrupted)
    assert all(ids == full[index] for index, ids in journaled.items()), "only whole answers are journaled"
    assert_resumes_to(JOURNALED_RUN, stopped, uninterrupted)


def test_second_sigterm_exits_at_once_keeping_the_journal(tmp_path, demo_assets, uninterrupted):
    # At 1 query/s loadgen's Server schedule outlasts the first signal by half a minute.
    conf = tmp_path / "user.conf"
    conf.write_text((ROOT / "user-demo.conf").read_text() + "mixtral-8x7b.Server.target_qps = 1\n")
    flags = ("--scenario", "Server", "--accuracy", "--user-conf", str(conf))
    stopped = tmp_path / "stopped"
    process = start_main(*flags, "--output-log-dir", str(stopped), cwd=tmp_path)
    wait_for_journal_files(stopped / "run_outputs", 1)
    os.killpg(process.pid, signal.SIGTERM)
    stderr_lines = []
    for line in process.stderr:  # until the first signal is taken: the Server schedule goes on for ~30 s
        stderr_lines.append(line)
        if line.startswith("interrupted (SIGTERM): stopping"):
            break
    assert process.poll() is None, "the first signal lets loadgen end its test"
    os.killpg(process.pid, signal.SIGTERM)
    _, rest = process.communicate(timeout=QUICK)
    stderr = "".join(stderr_lines) + rest
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "interrupted twice (SIGTERM)" in stderr.strip().splitlines()[-1]
    full = answers_by_index(uninterrupted)
    journaled = read_journal(stopped / "run_outputs")
    assert all(ids == full[index] for index, ids in journaled.items())
    assert_resumes_to(flags, stopped, uninterrupted)


@pytest.fixture
def demo_journal(tmp_path, demo_assets):
    """An accuracy run's journal folder holding one demo answer, recorded against the demo inputs."""
    from harness.journal import Journal
    from harness.run_record import checkpoint_identity, run_record

    logs = tmp_path / "logs"
    record = run_record(demo_assets.dataset_path, checkpoint_identity(demo_assets.model_dir), "float32")
    Journal(logs / "run_outputs", resume=False, made_from=record).record([0], [[330, 2]])
    return logs


@pytest.mark.parametrize("change, named", [
    ("dataset", "another dataset file (sha256"),
    ("model", "another model (config_sha256"),
    ("dtype", "another generation settings (dtype: \"float32\" then, \"bfloat16\" now)"),
])
def test_resume_refuses_a_journal_made_from_other_inputs(tmp_path, demo_assets, demo_journal, change, named):
    flags = ["--accuracy", "--resume", "--output-log-dir", str(demo_journal)]
    if change == "dataset":
        reversed_rows = tmp_path / "reversed.pkl"
        pd.read_pickle(demo_assets.dataset_path).iloc[::-1].reset_index(drop=True).to_pickle(reversed_rows)
        flags += ["--dataset-path", str(reversed_rows)]
    elif change == "model":
        flags += ["--model-path", random_tiny_mixtral(tmp_path / "other", vocab_size=32000)]
    else:
        flags += ["--dtype", "bfloat16"]
    result = run_main(*flags, cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, str(demo_journal / "run_outputs"), named, "choose another --output-log-dir")


def test_resume_names_a_corrupt_journal_file(tmp_path, demo_journal):
    corrupt = demo_journal / "run_outputs" / "q1.pkl"
    with corrupt.open("wb") as handle:
        pickle.dump({"query_ids": ["one"], "outputs": [[330]]}, handle)
    result = run_main("--accuracy", "--resume", "--output-log-dir", str(demo_journal), cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, str(corrupt), "corrupt run_outputs batch file", "found str 'one'")


@pytest.mark.quick
@pytest.mark.parametrize("folder", ["/proc/self", "/proc/self/nested", "a-file"])
def test_unusable_output_log_dir_is_reported_before_any_work(tmp_path, folder):
    if folder == "a-file":
        (tmp_path / folder).write_text("")
    result = run_main("--output-log-dir", folder, cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, "--output-log-dir", folder)
    assert "DEMO RUN" not in result.stdout, "checked before the demo assets or any model"


def test_malformed_audit_conf_is_reported_before_the_run(tmp_path, demo_assets):
    audit = tmp_path / "audit.config"
    audit.write_text("*.*.mode = banana\n")
    result = run_main("--audit-conf", str(audit), "--output-log-dir", str(tmp_path / "logs"), cwd=tmp_path,
                      timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, str(audit), "malformed")
    assert "Loading weights" not in result.stderr, "before the model loads"


def test_truncated_checkpoint_is_one_line(tmp_path, demo_assets):
    checkpoint = tmp_path / "truncated"
    shutil.copytree(demo_assets.model_dir, checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_main("--model-path", str(checkpoint), "--output-log-dir", str(tmp_path / "logs"), cwd=tmp_path,
                      timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, str(checkpoint), "cannot load the checkpoint", "--model-path")


def test_malformed_user_conf(tmp_path, demo_assets):
    conf = tmp_path / "user.conf"
    conf.write_text("mixtral-8x7b.Offline.min_query_count = many\n")
    result = run_main("--user-conf", str(conf), "--output-log-dir", str(tmp_path), cwd=tmp_path, timeout=QUICK)
    assert_one_line_error(result, str(conf), "malformed")


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, demo_assets):
    """The folder's lock is held by another process (this test's): the run names it and its pid."""
    from harness.output_dirs import exclusive_use

    out = tmp_path / "logs"
    out.mkdir()
    with exclusive_use(out, "--output-log-dir"):
        result = run_main("--accuracy", "--output-log-dir", str(out), cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, f"--output-log-dir {out}: another run (pid {os.getpid()}) is using this folder")
    assert not (out / "mlperf_log_detail.txt").exists() and not (out / "run_outputs").exists()


def test_resume_refuses_a_journal_without_a_run_record_unless_told(tmp_path, demo_journal):
    (demo_journal / "run_outputs" / "run.json").unlink()
    flags = ("--accuracy", "--resume", "--total-sample-count", "2", "--output-log-dir", str(demo_journal))
    refused = run_main(*flags, cwd=tmp_path, timeout=QUICK)
    assert refused.returncode == 2
    assert_one_line_error(refused, str(demo_journal / "run_outputs"), "has no run.json",
                          "pass --resume-unverified to reuse them anyway")
    resumed = run_main(*flags, "--resume-unverified", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert answers_by_index(demo_journal)[0] == [330, 2], "the journaled answer was reused"


@pytest.mark.quick
def test_resume_unverified_needs_resume(tmp_path):
    result = run_main("--accuracy", "--resume-unverified", "--output-log-dir", str(tmp_path), cwd=tmp_path,
                      timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, "--resume-unverified qualifies --resume")


@pytest.mark.parametrize("flags", [("--backend", "vllm"), ("--backend", "hf")])
def test_a_prompt_longer_than_the_engines_context_is_refused_before_loading(tmp_path, demo_assets, flags):
    frame = pd.read_pickle(demo_assets.dataset_path)
    frame.at[5, "tok_input"] = [1] + [330] * 2048
    long_prompts = tmp_path / "long.pkl"
    frame.to_pickle(long_prompts)
    result = run_main("--dataset-path", str(long_prompts), *flags, "--output-log-dir", str(tmp_path / "out"),
                      cwd=tmp_path, timeout=QUICK)
    assert result.returncode == 2
    assert_one_line_error(result, f"{long_prompts}: sample 5 has a 2049-token prompt",
                          "holds prompts of at most 2048 tokens")
    assert "Loading weights" not in result.stderr, "refused before any model loads"


def test_sigterm_while_the_model_loads_is_one_line_and_143(tmp_path, demo_assets):
    """Interrupted is no Exception: the loader's and tqdm's `except Exception` cannot swallow it."""
    from harness.interrupts import Interrupted

    assert not issubclass(Interrupted, Exception)
    process = start_main("--output-log-dir", str(tmp_path / "out"), cwd=tmp_path)
    stderr_lines = []
    for line in process.stderr:
        stderr_lines.append(line)
        if "Loaded 36 samples" in line:  # the dataset is in; the model loads next
            break
    os.killpg(process.pid, signal.SIGTERM)
    _, rest = process.communicate(timeout=QUICK)
    stderr = "".join(stderr_lines) + rest
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")


# Run as `python -c`: main.py as __main__, with an import hook that signals the process the moment
# `module` is first imported (main.py imports loadgen and aiohttp only after its
# handlers are in place).
SIGNAL_DURING_IMPORT = """
import os, runpy, signal, sys

class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {signum})
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["main.py", "--output-log-dir", {out!r}]
runpy.run_path({main!r}, run_name="__main__")
"""


@pytest.mark.quick
@pytest.mark.parametrize("module,signum,code",
                         [("aiohttp", signal.SIGTERM, 143), ("mlperf_loadgen", signal.SIGINT, 130)])
def test_a_signal_while_main_imports_is_one_line(tmp_path, module, signum, code):
    script = SIGNAL_DURING_IMPORT.format(module=module, signum=int(signum), out=str(tmp_path / "out"),
                                         main=str(ROOT / "main.py"))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=QUICK)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"error: interrupted by {signum.name}"]
    assert not (tmp_path / "out").exists()
