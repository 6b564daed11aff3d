"""tools.submission as a submitter runs it: real demo runs of both scenarios (performance, accuracy
scored, TEST06 verified), then the v6.0 tree built from them, and every refusal in one line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.provenance import SEED_KEYS, V6_0_SEEDS, embedded_mlperf_conf, seeds_warning
from tests.run_helpers import detail
from tools.submission.tree import MEASUREMENT_FIELDS, SYSTEM_FIELDS

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("performance run", "accuracy run", "accuracy scoring", "TEST06 run", "TEST06 verification")
# Server: 100 queries at 20/s instead of the demo's 460 at 4/s; TEST06 issues its own 100.
SHORT_SERVER_CONF = """\
mixtral-8x7b.*.performance_sample_count_override = 0
mixtral-8x7b.Server.min_duration = 0
mixtral-8x7b.Server.min_query_count = 100
mixtral-8x7b.Server.target_qps = 20
"""
HANG_TIMEOUT_S = 1800  # only catches a hang


def submission(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.submission", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=HANG_TIMEOUT_S, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def short_server_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conf") / "user-short-server.conf"
    path.write_text(SHORT_SERVER_CONF)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_assets, short_server_conf: Path) -> dict[str, Path]:
    """One run folder per scenario, made by `tools.submission run` on the demo."""
    base = tmp_path_factory.mktemp("runs")
    folders = {}
    for scenario, flags in (("Offline", []), ("Server", ["--user-conf", str(short_server_conf)])):
        folder = base / scenario.lower()
        result = submission("run", "--scenario", scenario, "--output-dir", str(folder), *flags, cwd=base)
        assert result.returncode == 0, result.stderr[-3000:]
        for number, step in enumerate(STEPS, start=1):
            assert f"[{number}/5] {scenario} {step}: running" in result.stdout
        folders[scenario] = folder
    return folders


@pytest.fixture(scope="module")
def system_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("system") / "demo_cpu.json"
    shutil.copy(ROOT / "tools" / "submission" / "system_template.json", path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, runs: dict[str, Path], system_json: Path) -> Path:
    before = {scenario: tree_hashes(folder) for scenario, folder in runs.items()}
    output = tmp_path_factory.mktemp("tree")
    result = submission("build", "--runs", str(runs["Offline"]), str(runs["Server"]), "--system-json",
                        str(system_json), "--submitter", "EXAMPLE", "--division", "closed", "--output", str(output),
                        cwd=output)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {scenario: tree_hashes(folder) for scenario, folder in runs.items()} == before, "a run folder changed"
    return output / "closed" / "EXAMPLE"


def test_loadgen_embeds_the_v6_0_seeds_and_every_run_logs_them(runs: dict[str, Path]) -> None:
    for folder in runs.values():
        for step in ("performance", "accuracy", "TEST06/run"):
            logged = detail(folder / step)
            assert {key: logged[f"effective_{key}"] for key in SEED_KEYS} == V6_0_SEEDS
            facts = json.loads((folder / step / "harness_run.json").read_text())
            assert facts["loadgen"] == {"version": "6.0.15", "seeds": V6_0_SEEDS}


def test_seeds_warning_names_the_checker_only_for_other_seeds() -> None:
    assert seeds_warning(V6_0_SEEDS) is None
    v6_1 = dict(V6_0_SEEDS, qsl_rng_seed=2085463073848966840)
    warning = seeds_warning(v6_1)
    assert warning is not None and "\n" not in warning and "fail the v6.0 submission checker" in warning


def test_embedded_mlperf_conf_is_loadgens_own() -> None:
    text = embedded_mlperf_conf()
    assert f"*.*.qsl_rng_seed = {V6_0_SEEDS['qsl_rng_seed']}" in text.splitlines()
    assert "mixtral-8x7b.Offline.min_query_count = 15000" in text.splitlines()


def test_each_run_records_its_command_configs_and_origin(runs: dict[str, Path], short_server_conf: Path) -> None:
    folder = runs["Server"]
    facts = json.loads((folder / "performance" / "harness_run.json").read_text())
    assert facts["mode"] == "performance" and facts["scenario"] == "Server"
    assert facts["command"][-2:] == ["--user-conf", str(short_server_conf)]
    assert set(facts["made_from"]) == {"dataset", "model", "generation"}
    assert facts["dataset_rows"] == facts["samples"] == 36
    assert re.fullmatch(r"[0-9a-f]{40}", facts["harness"]["commit"])
    assert (folder / "performance" / "user.conf").read_text() == SHORT_SERVER_CONF
    assert (folder / "performance" / "mlperf.conf").read_text() == embedded_mlperf_conf()
    test06 = json.loads((folder / "TEST06" / "run" / "harness_run.json").read_text())
    assert test06["audit_conf"].endswith("compliance/TEST06/audit.config")
    assert (folder / "TEST06" / "run" / "audit.config").is_file()
    assert not (runs["Offline"] / "performance" / "audit.config").exists()


def test_accuracy_is_scored_and_test06_verified_in_place(runs: dict[str, Path]) -> None:
    for folder in runs.values():
        accuracy_txt = (folder / "accuracy" / "accuracy.txt").read_text()
        digest = hashlib.sha256((folder / "accuracy" / "mlperf_log_accuracy.json").read_bytes()).hexdigest()
        assert accuracy_txt.endswith(f"hash={digest}\n")
        assert (folder / "TEST06" / "verify_accuracy.txt").read_text().endswith("TEST06 verification complete\n")
        assert (folder / "TEST06" / "accuracy" / "mlperf_log_accuracy.json").read_bytes() == \
            (folder / "TEST06" / "run" / "mlperf_log_accuracy.json").read_bytes()


def test_a_second_call_keeps_every_finished_step(runs: dict[str, Path]) -> None:
    folder = runs["Offline"]
    before = tree_hashes(folder)
    result = submission("run", "--scenario", "Offline", "--output-dir", str(folder), cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(f"[{n}/5] Offline {step}: done before, kept" in result.stdout for n, step in enumerate(STEPS, 1))
    assert tree_hashes(folder) == before


def test_a_folder_of_other_flags_or_an_owned_flag_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    message = one_line_error(submission("run", "--scenario", "Server", "--output-dir", str(runs["Offline"]),
                                        cwd=tmp_path))
    assert "steps.json: this folder holds runs of --scenario Offline" in message
    message = one_line_error(submission("run", "--scenario", "Offline", "--output-dir", str(tmp_path / "new"),
                                        "--accuracy", cwd=tmp_path))
    assert "--accuracy: set by this command" in message


def test_a_killed_run_continues_at_its_first_unfinished_step(tmp_path: Path, demo_assets) -> None:
    folder = tmp_path / "offline"
    command = [sys.executable, "-m", "tools.submission", "run", "--scenario", "Offline", "--output-dir", str(folder)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state = folder / "steps.json"
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while not (state.is_file() and "performance run" in json.loads(state.read_text())["done"]):
            assert first.poll() is None and time.monotonic() < deadline, "the first step never finished"
            time.sleep(0.2)
        performance = tree_hashes(folder / "performance")
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=HANG_TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, stderr[-2000:]
    # The signal ended the accuracy run, or came before it started (both are kept for the next call).
    assert ("[2/5] Offline accuracy run failed (exit 143)" in stderr
            or "error: SIGTERM before [2/5] Offline accuracy run" in stderr), stderr[-2000:]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[1/5] Offline performance run: done before, kept" in again.stdout
    assert "[2/5] Offline accuracy run: running" in again.stdout
    assert tree_hashes(folder / "performance") == performance
    assert (folder / "TEST06" / "verify_accuracy.txt").is_file()


def test_the_tree_has_every_file_in_place(tree: Path, runs: dict[str, Path], short_server_conf: Path) -> None:
    results = tree / "results" / "demo_cpu" / "mixtral-8x7b"
    expected = {"README.md", "user.conf", "mlperf.conf", "measurements.json",
                *(f"performance/run_1/{n}" for n in ("mlperf_log_summary.txt", "mlperf_log_detail.txt",
                                                     "mlperf_log_accuracy.json")),
                *(f"accuracy/{n}" for n in ("mlperf_log_summary.txt", "mlperf_log_detail.txt",
                                            "mlperf_log_accuracy.json", "accuracy.txt")),
                "TEST06/verify_accuracy.txt", "TEST06/accuracy/mlperf_log_accuracy.json"}
    for scenario in ("Offline", "Server"):
        assert set(tree_hashes(results / scenario)) == expected
        assert (results / scenario / "mlperf.conf").read_text() == embedded_mlperf_conf()
        measured = json.loads((results / scenario / "measurements.json").read_text())
        assert set(measured) == set(MEASUREMENT_FIELDS) and all(measured.values())
        readme = (results / scenario / "README.md").read_text()
        assert f"--scenario {scenario} --accuracy" in readme and "evaluate-accuracy.py" in readme
    assert (results / "Offline" / "user.conf").read_text() == (ROOT / "user-demo.conf").read_text()
    assert (results / "Server" / "user.conf").read_text() == short_server_conf.read_text()
    system = json.loads((tree / "systems" / "demo_cpu.json").read_text())
    assert set(SYSTEM_FIELDS) <= set(system)
    assert (tree / "documentation" / "calibration.md").read_text().startswith("# Calibration")
    source = tree / "src" / "mixtral-8x7b"
    assert (source / "main.py").read_bytes() == (ROOT / "main.py").read_bytes()
    assert not [p for p in source.rglob("*") if p.name.startswith(".")]
    assert not (source / "demo_assets").exists()


def copy_runs(runs: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "offline"
    shutil.copytree(runs["Offline"], copy)
    return copy


def build(folder: Path, system_json: Path, tmp_path: Path, division: str = "closed") -> subprocess.CompletedProcess:
    return submission("build", "--runs", str(folder), "--system-json", str(system_json), "--submitter", "EXAMPLE",
                      "--division", division, "--output", str(tmp_path / "tree"), cwd=tmp_path)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_runs_of_another_dataset_are_refused(runs: dict[str, Path], system_json: Path, tmp_path: Path) -> None:
    other = copy_runs(runs, tmp_path)
    facts = other / "accuracy" / "harness_run.json"
    edit_json(facts, lambda f: f["made_from"]["dataset"].update(sha256="0" * 64))
    result = submission("build", "--runs", str(runs["Server"]), str(other), "--system-json", str(system_json),
                        "--submitter", "EXAMPLE", "--division", "closed", "--output", str(tmp_path / "tree"),
                        cwd=tmp_path)
    assert f"{facts}: made from another dataset than" in one_line_error(result)
    assert not (tmp_path / "tree").exists()


def test_an_accuracy_run_short_of_the_dataset_is_refused(runs, system_json: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path)
    log = folder / "accuracy" / "mlperf_log_accuracy.json"
    log.write_text(json.dumps(json.loads(log.read_text())[:-1]))
    assert f"{log}: answers 35 samples, the dataset has 36 rows" in one_line_error(build(folder, system_json, tmp_path))


@pytest.mark.parametrize("damage", ["missing", "other hash"])
def test_accuracy_txt_missing_or_of_another_log_is_refused(runs, system_json: Path, tmp_path: Path,
                                                           damage: str) -> None:
    folder = copy_runs(runs, tmp_path)
    accuracy_txt = folder / "accuracy" / "accuracy.txt"
    if damage == "missing":
        accuracy_txt.unlink()
        says = "not found (score the log with evaluate-accuracy.py)"
    else:
        accuracy_txt.write_text(re.sub(r"hash=\w+", "hash=" + "0" * 64, accuracy_txt.read_text()))
        says = "its hash is not that of mlperf_log_accuracy.json"
    assert f"{accuracy_txt}: {says}" in one_line_error(build(folder, system_json, tmp_path))


def test_a_failed_test06_is_refused(runs, system_json: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path)
    report = folder / "TEST06" / "verify_accuracy.txt"
    report.write_text(report.read_text().replace("TEST06 verification complete", "TEST06 verification failed"))
    assert f"{report}: TEST06 did not pass" in one_line_error(build(folder, system_json, tmp_path))


def test_seeds_of_another_round_are_refused(runs, system_json: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path)
    log = folder / "performance" / "mlperf_log_detail.txt"
    log.write_text(log.read_text().replace(str(V6_0_SEEDS["qsl_rng_seed"]), "2085463073848966840"))
    assert f"{log}: rng seeds are not the v6.0 round's" in one_line_error(build(folder, system_json, tmp_path))


def test_a_system_without_a_required_field_is_refused(runs, system_json: Path, tmp_path: Path) -> None:
    incomplete = tmp_path / "incomplete.json"
    shutil.copy(system_json, incomplete)
    edit_json(incomplete, lambda s: (s.pop("cooling"), s.update(host_storage_type="")))
    message = one_line_error(build(runs["Offline"], incomplete, tmp_path))
    assert f"{incomplete}: missing field(s) the v6.0 checker requires: cooling" in message


def test_an_invalid_performance_run_is_built_with_a_warning(runs, system_json: Path, tmp_path: Path) -> None:
    folder = copy_runs(runs, tmp_path)
    log = folder / "performance" / "mlperf_log_detail.txt"
    log.write_text(log.read_text().replace('"key": "result_validity", "value": "VALID"',
                                           '"key": "result_validity", "value": "INVALID"'))
    open_system = tmp_path / "open_system.json"
    shutil.copy(system_json, open_system)
    edit_json(open_system, lambda s: s.update(division="open"))
    result = build(folder, open_system, tmp_path, division="open")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"warning: {folder / 'performance' / 'mlperf_log_summary.txt'}: "
                                     "the performance run is INVALID")
    assert not (tmp_path / "tree" / "open" / "EXAMPLE" / "documentation").exists()  # closed division only
