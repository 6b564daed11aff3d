"""evaluate-accuracy.py end to end, in a subprocess, on the demo dataset."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from harness.evaluation.accuracy_log import encode_entry_data
from harness.evaluation.inputs import tokenizer_model_for
from harness.evaluation.report import RESULT_KEYS
from harness.postprocess import postprocess_output
from harness.tokenizer import load_sentencepiece, reference_decode
from tests.processes import processes_in

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "evaluate-accuracy.py"


def oracle_outputs(frame: pd.DataFrame) -> dict[int, list[int]]:
    """The reference model's answers (tok_ref_output) post-processed as the harness does."""
    return {i: postprocess_output(list(row.tok_ref_output),
                                  list(row.tok_stop_sequence) if row.dataset == "MBXP" else ())
            for i, row in frame.iterrows()}


def write_log(path: Path, outputs: dict[int, list[int]], dtype: str = "int32", repeat: int = 0) -> Path:
    entries = [{"seq_id": n, "qsl_idx": i, "data": encode_entry_data(ids, dtype), "token_count": len(ids)}
               for n, (i, ids) in enumerate(outputs.items())]
    entries += entries[:repeat]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def evaluate(demo_assets, env: dict[str, str]) -> Run:
    def run(log: Path, *flags: str, run_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, str(EVALUATE), "--mlperf-accuracy-file", str(log),
                   "--dataset-file", str(demo_assets.dataset_path), "--no-progress", *flags]
        return subprocess.run(command, cwd=ROOT, env=run_env or env, capture_output=True, text=True, timeout=600)
    return run


def results_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return ast.literal_eval(lines[lines.index("Results") + 2])


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("evaluate-accuracy.py: error: ")
    assert "Results" not in proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def oracle_run(frame: pd.DataFrame, evaluate: Run, tmp_path_factory: pytest.TempPathFactory):
    log = write_log(tmp_path_factory.mktemp("oracle") / "mlperf_log_accuracy.json", oracle_outputs(frame), repeat=2)
    return log, evaluate(log)


def test_oracle_log_gives_the_reference_figures(oracle_run, frame: pd.DataFrame) -> None:
    log, proc = oracle_run
    results = results_of(proc)
    assert list(results) == list(RESULT_KEYS)
    assert {k: results[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gsm8k")} == {
        "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0, "gsm8k": 100.0}
    outputs = oracle_outputs(frame)
    assert results["gen_num"] == len(frame) + 2  # the two repeated entries count
    assert results["gen_tok_len"] == sum(len(ids) for ids in outputs.values())
    assert results["tokens_per_sample"] == round(results["gen_tok_len"] / (len(frame) + 2), 1)
    assert results["mbxp"] == 100.0  # the demo's reference answers pass their tests


def test_outputs_files_match_the_printed_line(oracle_run) -> None:
    log, proc = oracle_run
    results = results_of(proc)
    sha = hashlib.sha256(log.read_bytes()).hexdigest()
    assert (log.parent / "accuracy.txt").read_text(encoding="utf-8") == f"{results!r}\nhash={sha}\n"
    summary = json.loads((log.parent / "results.json").read_text(encoding="utf-8"))
    assert summary["results"] == results
    assert summary["accuracy_log_sha256"] == sha
    assert summary["duplicate_entries"] == 2
    assert [c["metric"] for c in summary["checks"]] == ["rouge1", "rouge2", "rougeL", "gsm8k", "mbxp",
                                                        "tokens_per_sample"]
    assert set(summary["mbxp_languages"]) == {"cpp", "javascript", "php", "python", "ruby", "typescript"}
    assert set(summary["seconds"]) == {"load", "decode", "openorca", "gsm8k", "mbxp"}
    assert "PASS" in proc.stdout and "language" in proc.stdout


def test_int64_log_gives_the_same_figures(oracle_run, frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    log = write_log(tmp_path / "mlperf_log_accuracy.json", oracle_outputs(frame), "int64", repeat=2)
    assert results_of(evaluate(log, "--dtype", "int64")) == results_of(oracle_run[1])


def test_output_dir_flag(frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    gsm8k = {i: ids for i, ids in oracle_outputs(frame).items() if frame.at[i, "dataset"] == "GSM8K"}
    log = write_log(tmp_path / "log" / "mlperf_log_accuracy.json", gsm8k)
    proc = evaluate(log, "--output-dir", str(tmp_path / "out"))
    results_of(proc)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["accuracy.txt", "results.json"]


def test_a_log_with_one_part_reports_the_others_absent(frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    outputs = oracle_outputs(frame)
    gsm8k = {i: outputs[i] for i in outputs if frame.at[i, "dataset"] == "GSM8K"}
    gsm8k[next(iter(gsm8k))] = [330]  # one wrong answer ("A")
    proc = evaluate(write_log(tmp_path / "mlperf_log_accuracy.json", gsm8k))
    results = results_of(proc)
    assert list(results) == ["gsm8k", "gen_len", "gen_num", "gen_tok_len", "tokens_per_sample"]
    assert results["gsm8k"] == 100.0 * (len(gsm8k) - 1) / len(gsm8k)
    assert results["gen_len"] == 0
    table = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert table["rouge1"][1] == "absent" and table["mbxp"][1] == "absent"
    summary = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert "rouge1" not in summary["results"] and summary["mbxp_languages"] == {}


def test_skipped_languages_are_reported(frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    mbxp = {i: ids for i, ids in oracle_outputs(frame).items() if str(frame.at[i, "id"]).startswith(("cpp_", "php_"))}
    proc = evaluate(write_log(tmp_path / "mlperf_log_accuracy.json", mbxp), "--skip-languages", "php")
    results = results_of(proc)
    summary = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert summary["mbxp_languages"]["php"] == {"rows": 2, "status": "skipped (--skip-languages)"}
    assert summary["mbxp_languages"]["cpp"]["scored"] == 2
    assert results["mbxp"] == summary["mbxp_languages"]["cpp"]["mbxp"]


@pytest.fixture
def public_bin() -> Iterator[Path]:
    """A folder of tool links that the checks' unprivileged user can reach (pytest's are private)."""
    folder = Path(tempfile.mkdtemp(prefix="mbxp-bin-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize(("tools", "broken", "says"), [
    (("g++", "as", "ld", "node", "ruby"), "php", "php not found on PATH"),
    (("g++", "ld", "node", "ruby", "php"), "cpp", "a one-line cpp program does not pass: g++: fatal error: "
                                                  "cannot execute ‘as’"),
])
def test_broken_toolchain_stops_before_scoring(oracle_run, evaluate: Run, env: dict[str, str], tmp_path: Path,
                                               public_bin: Path, tools: tuple[str, ...], broken: str,
                                               says: str) -> None:
    for tool in tools:
        (public_bin / tool).symlink_to(os.path.realpath(shutil.which(tool)))
    proc = evaluate(oracle_run[0], "--output-dir", str(tmp_path / "out"),
                    run_env={**env, "PATH": f"{public_bin}{os.pathsep}{Path(sys.executable).parent}"})
    message = one_line_error(proc)
    assert f"MBXP toolchain broken: {broken}: {says}" in message
    assert message.endswith(f"--skip-languages {broken} to leave those languages out, reported as skipped)")
    assert list((tmp_path / "out").iterdir()) == []  # proven writable, then left empty: nothing was scored


@pytest.mark.parametrize("output", ["/proc/evaluate-out", "file"])
def test_unwritable_output_dir_stops_before_any_loading(evaluate: Run, tmp_path: Path, output: str) -> None:
    (tmp_path / "file").write_text("keep me")
    target = Path(output) if output.startswith("/") else tmp_path / output
    log = write_log(tmp_path / "log" / "mlperf_log_accuracy.json", {0: [330, 2]})
    # A dataset that cannot be loaded: the output folder's error shows that it was checked first.
    unloadable = tmp_path / "not-a-pickle.pkl"
    unloadable.write_text("not a pickle")
    proc = evaluate(log, "--output-dir", str(target), "--dataset-file", str(unloadable))
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"evaluate-accuracy.py: error: --output-dir {target}: ")
    assert (tmp_path / "file").read_text() == "keep me"


def test_malformed_log(evaluate: Run, tmp_path: Path) -> None:
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text('[{"seq_id": 0, "qsl_idx": 0, "data": "0100', encoding="utf-8")
    assert "malformed JSON" in one_line_error(evaluate(log))


def test_qsl_idx_outside_the_dataset(frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    log = write_log(tmp_path / "mlperf_log_accuracy.json", {len(frame): [330, 2]})
    assert f"qsl_idx {len(frame)} is outside the dataset of {len(frame)} rows" in one_line_error(evaluate(log))


def test_int64_log_read_as_int32(frame: pd.DataFrame, evaluate: Run, tmp_path: Path) -> None:
    log = write_log(tmp_path / "mlperf_log_accuracy.json", oracle_outputs(frame), "int64")
    assert one_line_error(evaluate(log)).endswith("use --dtype int64")


def test_bad_flags(oracle_run, evaluate: Run, tmp_path: Path) -> None:
    assert "--skip-languages: kotlin" in one_line_error(evaluate(oracle_run[0], "--skip-languages", "kotlin"))
    assert "no tokenizer.model" in one_line_error(evaluate(oracle_run[0], "--checkpoint-path", str(tmp_path)))
    assert "--mlperf-accuracy-file" in one_line_error(evaluate(tmp_path / "absent.json"))
    absent = tmp_path / "absent.pkl"
    assert one_line_error(evaluate(oracle_run[0], "--dataset-file", str(absent))).endswith(
        f"--dataset-file {absent}: file not found")


def test_real_demo_accuracy_run(evaluate: Run, env: dict[str, str], tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "main.py", "--scenario", "Offline", "--accuracy",
                          "--output-log-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    results = results_of(evaluate(tmp_path / "mlperf_log_accuracy.json"))
    assert list(results) == list(RESULT_KEYS)
    assert results["gen_num"] >= 36


def test_openorca_is_scored_against_gt_output_not_ref_output(frame):
    from harness.evaluation.accuracy import score_openorca
    from harness.evaluation.sentences import install_punkt_tab

    install_punkt_tab()
    orca = frame.index[frame["dataset"] == "OpenOrca"].tolist()
    answers = {i: str(frame.at[i, "ref_output"]) for i in orca}
    other_truth = frame.copy()
    other_truth.loc[orca, "gt_output"] = "Completely unrelated words about sailing boats."
    assert score_openorca(frame, orca, answers, progress=False)[0]["rouge1"] == 100.0  # demo: gt == ref
    assert score_openorca(other_truth, orca, answers, progress=False)[0]["rouge1"] < 20


# Answers that wait until they are killed (the run timeout is 20 s), idle so as to leave the CPU to others.
WAITING_ANSWERS = {
    "python": "import time\nwhile True:\n    time.sleep(0.01)\n",
    "ruby": "sleep\n",
    "javascript": "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);\n",
    "typescript": "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);\n",
    "php": "<?php\nwhile (true) { sleep(1); }\n",
    "cpp": "#include <stdexcept>\n#include <unistd.h>\nusing namespace std;\n"
           "int waiting = [] { for (;;) pause(); return 0; }();\n",
}
START_WAIT_S = 600  # loading, the toolchain probes, the first check: catches a hang only
INTERRUPT_WAIT_S = 100  # catches a hang only; ending at the checks' 20 s timeouts would take over 120 s


def _answer_running(root: Path) -> bool:
    # A command of a check (its supervisor, confine.py, runs in the folder too but is not one).
    for process in processes_in(root):
        try:
            if "confine.py" not in " ".join(process.cmdline()):
                return True
        except psutil.NoSuchProcess:  # ended since it was listed (a zombie included)
            continue
    return False


@pytest.fixture
def check_root() -> Iterator[Path]:
    """The evaluator's temporary folder (TMPDIR), so that its check folders are told apart from
    those of checks that others run at the same time; reachable by the checks' unprivileged user."""
    root = Path(tempfile.mkdtemp(prefix="mbxp-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_mbxp_scoring_stops_the_checks_and_writes_nothing(
        frame: pd.DataFrame, demo_assets, env: dict[str, str], tmp_path: Path, check_root: Path,
        signum: signal.Signals) -> None:
    sp = load_sentencepiece(tokenizer_model_for(None))
    outputs = {}
    for i in frame.index[frame["dataset"] == "MBXP"]:
        answer = WAITING_ANSWERS[str(frame.at[i, "id"]).split("_", 1)[0]]
        outputs[i] = sp.encode(answer)
        assert reference_decode(sp, outputs[i]) == answer
    log = write_log(tmp_path / "log" / "mlperf_log_accuracy.json", outputs)
    out = tmp_path / "out"
    command = [sys.executable, str(EVALUATE), "--mlperf-accuracy-file", str(log), "--dataset-file",
               str(demo_assets.dataset_path), "--no-progress", "--output-dir", str(out)]
    evaluator = subprocess.Popen(command, cwd=ROOT, env={**env, "TMPDIR": str(check_root)}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while not _answer_running(check_root) and evaluator.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _answer_running(check_root), "no MBXP check started"
        evaluator.send_signal(signum)
        stdout, stderr = evaluator.communicate(timeout=INTERRUPT_WAIT_S)
    finally:
        evaluator.kill()
    assert evaluator.returncode == 128 + signum, stderr
    assert stderr.splitlines() == [f"evaluate-accuracy.py: error: interrupted by {signum.name}"], stderr
    assert "Results" not in stdout
    assert processes_in(check_root) == []
    assert list(check_root.iterdir()) == []
    assert list(out.iterdir()) == []  # proven writable before loading, then left empty
