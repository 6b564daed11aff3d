"""`python -m tools.submission build`: the v6.0 submission tree of one system from run folders.

Every input is checked before anything is written, and each refusal is one line naming the file;
the run folders are only read. Layout (what MLCommons' v6.0 checker reads):

{division}/{submitter}/systems/{system}.json
{division}/{submitter}/src/mixtral-8x7b/                 this repository's tracked files, no dotfiles
{division}/{submitter}/documentation/calibration.md     closed division
{division}/{submitter}/results/{system}/mixtral-8x7b/{scenario}/
    performance/run_1/   accuracy/ (with accuracy.txt)   TEST06/ (verify_accuracy.txt, accuracy/)
    measurements.json    user.conf    mlperf.conf    README.md
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.json_files import JsonFileError, read_json_file
from harness.loadgen_logs import read_detail_log
from harness.provenance import (
    MLPERF_CONF_FILE,
    MLPERF_OVERRIDE_FILE,
    USER_CONF_FILE,
    V6_0_SEEDS,
    ProvenanceError,
    read_run_facts,
)
from harness.run_record import file_sha256
from tools.submission.runs import STATE_FILE

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = "mixtral-8x7b"
LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")
TEST06_PASSED = "TEST06 verification complete"
# The fields MLCommons' v6.0 checker requires in systems/{system}.json, and those it requires non-empty.
SYSTEM_FIELDS = (
    "division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_storage_capacity",
    "host_storage_type", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system", "system_type", "other_software_stack", "host_processor_frequency",
    "host_processor_caches", "host_memory_configuration", "host_processor_interconnect", "host_networking",
    "host_networking_topology", "accelerator_frequency", "accelerator_host_interconnect", "accelerator_interconnect",
    "accelerator_interconnect_topology", "accelerator_memory_configuration", "accelerator_on-chip_memories",
    "cooling", "hw_notes", "sw_notes", "host_network_card_count", "system_type_detail",
)
SYSTEM_FIELDS_NON_EMPTY = (
    "division", "submitter", "system_type", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_memory_configuration",
    "host_storage_capacity", "host_storage_type", "host_networking", "host_network_card_count",
    "host_networking_topology", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "accelerator_host_interconnect", "accelerator_memory_configuration", "accelerator_interconnect", "cooling",
    "framework", "operating_system", "other_software_stack",
)
MEASUREMENT_FIELDS = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
                      "weight_transformations")
SOURCE_SKIPPED = ("demo_assets", "output-logs", "results", "build", "node_modules", "__pycache__")


class TreeError(Exception):
    """An input that cannot go into a submission; the message is one line naming the file."""


@dataclass(frozen=True)
class ScenarioRuns:
    """One `tools.submission run` folder, checked."""

    folder: Path
    scenario: str
    facts: dict[str, dict[str, Any]]  # step folder name -> its harness_run.json
    commands: dict[str, list[str]]
    valid: bool


def read_json(path: Path, what: str) -> Any:
    try:
        return read_json_file(path, what)
    except JsonFileError as exc:
        raise TreeError(str(exc)) from None


def require_files(folder: Path, names: Sequence[str], what: str) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise TreeError(f"{folder / name}: not found ({what})")


def detail_of(folder: Path) -> dict[str, Any]:
    return read_detail_log(folder / "mlperf_log_detail.txt")


def check_seeds(folder: Path, detail: dict[str, Any]) -> None:
    seeds = {key: detail.get(f"effective_{key}") for key in V6_0_SEEDS}
    if seeds != V6_0_SEEDS:
        raise TreeError(f"{folder / 'mlperf_log_detail.txt'}: rng seeds are not the v6.0 round's "
                        f"(qsl_rng_seed {seeds['qsl_rng_seed']}); rerun with mlcommons-loadgen==6.0.15")


def check_accuracy(folder: Path, facts: Mapping[str, Any]) -> None:
    """The accuracy run covers every row of the dataset, and accuracy.txt scores this very log."""
    log = folder / "mlperf_log_accuracy.json"
    entries = read_json(log, "the accuracy run's log")
    try:
        covered = {int(entry["qsl_idx"]) for entry in entries}
    except (TypeError, KeyError, ValueError):
        raise TreeError(f"{log}: not a loadgen accuracy log") from None
    rows = facts.get("dataset_rows")
    if covered != set(range(rows if isinstance(rows, int) else -1)):
        raise TreeError(f"{log}: answers {len(covered)} samples, the dataset has {rows} rows; a submission's "
                        "accuracy run covers the whole dataset (leave --total-sample-count out)")
    accuracy_txt = folder / "accuracy.txt"
    try:
        text = accuracy_txt.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TreeError(f"{accuracy_txt}: not found (score the log with evaluate-accuracy.py)") from None
    hashes = re.findall(r"^hash=([0-9a-f]{64})$", text, flags=re.MULTILINE)
    if hashes != [file_sha256(log)]:
        raise TreeError(f"{accuracy_txt}: its hash is not that of {log.name} (score this log again with "
                        "evaluate-accuracy.py)")


def check_test06(folder: Path) -> None:
    report = folder / "TEST06" / "verify_accuracy.txt"
    require_files(folder / "TEST06", ("verify_accuracy.txt", "accuracy/mlperf_log_accuracy.json"), "TEST06")
    if TEST06_PASSED not in report.read_text(encoding="utf-8", errors="replace"):
        raise TreeError(f"{report}: TEST06 did not pass")


def read_scenario_runs(folder: Path) -> ScenarioRuns:
    """Reads and checks one run folder (made by `tools.submission run`)."""
    state = read_json(folder / STATE_FILE, "made by python -m tools.submission run")
    facts = {}
    for step in ("performance", "accuracy", "TEST06/run"):
        step_dir = folder / step
        require_files(step_dir, LOG_FILES, f"the {step} run's loadgen logs")
        try:
            facts[step] = read_run_facts(step_dir)
        except ProvenanceError as exc:
            raise TreeError(str(exc)) from None
    performance, accuracy = folder / "performance", folder / "accuracy"
    details = {step: detail_of(folder / step) for step in facts}
    scenario = details["performance"].get("effective_scenario")
    if scenario not in ("Offline", "Server"):
        raise TreeError(f"{performance / 'mlperf_log_detail.txt'}: no Offline or Server scenario logged")
    if details["performance"].get("effective_test_mode") != "PerformanceOnly":
        raise TreeError(f"{performance / 'mlperf_log_detail.txt'}: not a performance run")
    if details["accuracy"].get("effective_test_mode") != "AccuracyOnly":
        raise TreeError(f"{accuracy / 'mlperf_log_detail.txt'}: not an accuracy run")
    for step in facts:
        logged = details[step].get("effective_scenario")
        if logged != scenario:
            raise TreeError(f"{folder / step / 'mlperf_log_detail.txt'}: a {logged} run beside {scenario} runs")
    check_seeds(performance, details["performance"])
    check_accuracy(accuracy, facts["accuracy"])
    check_test06(folder)
    commands = state.get("done", {}) if isinstance(state, dict) else {}
    if not isinstance(commands, dict) or len(commands) < 5:
        raise TreeError(f"{folder / STATE_FILE}: not every step has finished (run python -m tools.submission run "
                        "again with the same flags)")
    return ScenarioRuns(folder, scenario, facts, commands, details["performance"].get("result_validity") == "VALID")


def check_same_origin(runs: Sequence[ScenarioRuns]) -> None:
    """Every run made from one model and one dataset, with the same generation settings."""
    first = runs[0].facts["performance"]["made_from"]
    for scenario_runs in runs:
        for step, facts in scenario_runs.facts.items():
            for part, label in (("model", "model"), ("dataset", "dataset"), ("generation", "generation settings")):
                if facts["made_from"].get(part) != first.get(part):
                    path = scenario_runs.folder / step / "harness_run.json"
                    raise TreeError(f"{path}: made from another {label} than "
                                    f"{runs[0].folder / 'performance' / 'harness_run.json'}")


def check_system(path: Path, division: str, submitter: str) -> dict[str, Any]:
    """The system description, with division and submitter filled in where absent."""
    system = read_json(path, "--system-json")
    if not isinstance(system, dict):
        raise TreeError(f"{path}: not a JSON object of system fields")
    for field, wanted in (("division", division), ("submitter", submitter)):
        if system.setdefault(field, wanted) != wanted:
            raise TreeError(f"{path}: {field} is {system[field]!r}, but --{field} is {wanted!r}")
    missing = [field for field in SYSTEM_FIELDS if field not in system]
    if missing:
        raise TreeError(f"{path}: missing field(s) the v6.0 checker requires: {', '.join(missing)}")
    empty = [field for field in SYSTEM_FIELDS_NON_EMPTY if system[field] in ("", None)]
    if empty:
        raise TreeError(f"{path}: empty field(s) the v6.0 checker requires a value in: {', '.join(empty)}")
    return system


def measurements(facts: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """measurements.json: what the recorded run says, then any field the submitter gives."""
    command = facts.get("command", [])
    model = next((command[i + 1] for i, flag in enumerate(command[:-1]) if flag == "--model-path"), None)
    served = facts["made_from"].get("model", {}).get("served_model")
    dtype = facts["made_from"].get("generation", {}).get("dtype", "")
    fields = {"input_data_types": "int32", "retraining": "No",
              "starting_weights_filename": served or (Path(model).name if model else "the harness's demo model"),
              "weight_data_types": dtype, "weight_transformations": "none"}
    return {**fields, **overrides}


def scenario_readme(runs: ScenarioRuns) -> str:
    facts = runs.facts["performance"]
    harness, loadgen = facts.get("harness", {}), facts.get("loadgen", {})
    dirty = " (with uncommitted changes)" if harness.get("dirty") else ""
    lines = [f"# {BENCHMARK} {runs.scenario}", "",
             f"Made with this repository's harness (src/{BENCHMARK}) at commit {harness.get('commit')}{dirty}, "
             f"mlcommons-loadgen {loadgen.get('version')}, backend {facts.get('backend')}.", "",
             "## Commands, as they ran", ""]
    for step, command in runs.commands.items():
        lines += [f"{step}:", "", "```", " ".join(command), "```", ""]
    return "\n".join(lines)


def calibration_note(facts: Mapping[str, Any]) -> str:
    dtype = facts["made_from"].get("generation", {}).get("dtype")
    return ("# Calibration\n\nNo calibration: the model runs from the original weights in "
            f"{dtype}, with no quantization.\n")


def source_files() -> list[Path]:
    """The repository's tracked files (every file outside generated folders when there is no git),
    none whose path has a part starting with "." (the older checker rejects them)."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0:
        files = [Path(name) for name in listed.stdout.decode().split("\0") if name]
    else:
        files = [p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file()]
    return sorted(p for p in files if not any(part.startswith(".") or part in SOURCE_SKIPPED for part in p.parts)
                  and (ROOT / p).is_file())


def mlperf_conf_text(performance: Path) -> str:
    text = (performance / MLPERF_CONF_FILE).read_text(encoding="utf-8")
    override = performance / MLPERF_OVERRIDE_FILE
    if override.is_file():
        text += f"\n# Applied over the above by --mlperf-conf:\n{override.read_text(encoding='utf-8')}"
    return text


def write_scenario(target: Path, runs: ScenarioRuns, measured: Mapping[str, Any]) -> None:
    folder = runs.folder
    for source, destination in ((folder / "performance", target / "performance" / "run_1"),
                                (folder / "accuracy", target / "accuracy")):
        destination.mkdir(parents=True)
        for name in LOG_FILES:
            shutil.copy2(source / name, destination / name)
    shutil.copy2(folder / "accuracy" / "accuracy.txt", target / "accuracy" / "accuracy.txt")
    (target / "TEST06" / "accuracy").mkdir(parents=True)
    shutil.copy2(folder / "TEST06" / "verify_accuracy.txt", target / "TEST06" / "verify_accuracy.txt")
    shutil.copy2(folder / "TEST06" / "accuracy" / "mlperf_log_accuracy.json",
                 target / "TEST06" / "accuracy" / "mlperf_log_accuracy.json")
    shutil.copy2(folder / "performance" / USER_CONF_FILE, target / "user.conf")
    (target / "mlperf.conf").write_text(mlperf_conf_text(folder / "performance"), encoding="utf-8")
    (target / "measurements.json").write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    (target / "README.md").write_text(scenario_readme(runs), encoding="utf-8")


def build_tree(run_folders: Sequence[Path], system_json: Path, submitter: str, division: str, output: Path,
               measurement_overrides: Mapping[str, Any] | None = None) -> tuple[Path, list[str]]:
    """Checks everything, then writes the tree; returns the results folder and the warnings."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", submitter):
        raise TreeError(f"--submitter {submitter!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    system_name = system_json.stem
    system = check_system(system_json, division, submitter)
    runs = [read_scenario_runs(folder) for folder in run_folders]
    seen: dict[str, Path] = {}
    for scenario_runs in runs:
        if scenario_runs.scenario in seen:
            raise TreeError(f"{scenario_runs.folder}: a second {scenario_runs.scenario} run folder "
                            f"(beside {seen[scenario_runs.scenario]})")
        seen[scenario_runs.scenario] = scenario_runs.folder
    check_same_origin(runs)
    for scenario_runs in runs:
        for step in scenario_runs.facts:
            for name in (USER_CONF_FILE, MLPERF_CONF_FILE):
                require_files(scenario_runs.folder / step, (name,), "recorded by main.py")
    submitter_dir = output / division / submitter
    results = submitter_dir / "results" / system_name / BENCHMARK
    if results.exists():
        raise TreeError(f"{results}: already exists; build into a new --output")
    resolved_output = output.resolve()
    for folder in run_folders:
        if resolved_output.is_relative_to(folder.resolve()):
            raise TreeError(f"--output {output}: inside the run folder {folder}, which this command never changes")
    warnings = [f"warning: {r.folder / 'performance' / 'mlperf_log_summary.txt'}: the performance run is INVALID"
                for r in runs if not r.valid]

    overrides = dict(measurement_overrides or {})
    for scenario_runs in runs:
        write_scenario(results / scenario_runs.scenario, scenario_runs,
                       measurements(scenario_runs.facts["performance"], overrides))
    (submitter_dir / "systems").mkdir(parents=True, exist_ok=True)
    (submitter_dir / "systems" / f"{system_name}.json").write_text(json.dumps(system, indent=2) + "\n",
                                                                   encoding="utf-8")
    source = submitter_dir / "src" / BENCHMARK
    if not source.exists():
        for relative in source_files():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, source / relative)
    if division == "closed":
        (submitter_dir / "documentation").mkdir(exist_ok=True)
        calibration = submitter_dir / "documentation" / "calibration.md"
        if not calibration.exists():
            calibration.write_text(calibration_note(runs[0].facts["performance"]), encoding="utf-8")
    return results, warnings
