"""What produced a run, kept beside its logs: the loadgen configs it really used, the command line,
the harness and loadgen versions, and what its answers were made from (model, dataset, settings).

A submission's README and configs are built from these records (tools/submission), so they say
what ran rather than what a submitter remembers.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.json_files import JsonFileError, read_json_file

RUN_FACTS_FILE = "harness_run.json"
USER_CONF_FILE = "user.conf"
MLPERF_CONF_FILE = "mlperf.conf"
MLPERF_OVERRIDE_FILE = "mlperf-override.conf"  # --mlperf-conf, applied over the embedded mlperf.conf
AUDIT_CONF_FILE = "audit.config"
SEED_KEYS = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")
# The seeds of the v6.0 round, the last one with mixtral-8x7b: MLCommons' v6.0 checker refuses
# performance logs made with any others.
V6_0_SEEDS = {"qsl_rng_seed": 2465351861681999779, "sample_index_rng_seed": 14276810075590677512,
              "schedule_rng_seed": 3936089224930324775}
LOADGEN_DISTRIBUTION = "mlcommons-loadgen"
ROOT = Path(__file__).resolve().parents[1]


class ProvenanceError(Exception):
    """A record cannot be written or read; the message is one line naming the file."""


def loadgen_seeds(settings: Any) -> dict[str, int]:
    """The rng seeds a loadgen TestSettings carries once its embedded mlperf.conf is applied."""
    return {key: int(getattr(settings, key)) for key in SEED_KEYS}


def seeds_warning(seeds: Mapping[str, int]) -> str | None:
    """One line when the seeds are not v6.0's (a user may run another loadgen), else None."""
    if dict(seeds) == V6_0_SEEDS:
        return None
    return (f"warning: this loadgen ({loadgen_version()}) embeds rng seeds other than the v6.0 round's "
            f"(qsl_rng_seed {seeds.get('qsl_rng_seed')}); its performance results will fail the v6.0 submission "
            f"checker (install {LOADGEN_DISTRIBUTION}==6.0.15, as requirements.txt pins)")


def loadgen_version() -> str:
    try:
        return importlib.metadata.version(LOADGEN_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def embedded_mlperf_conf() -> str:
    """The mlperf.conf compiled into loadgen, read from its extension module.

    loadgen offers no call that returns it, and it is the file a submission must carry (its seeds
    and rules are what every run used). It is one NUL-terminated string in the binary; the seed
    line is found in it, and the string around it is the file.
    """
    import mlperf_loadgen

    data = Path(mlperf_loadgen.__file__).read_bytes()
    marker = data.find(b"qsl_rng_seed = ")
    if marker < 0:
        raise ProvenanceError(f"{mlperf_loadgen.__file__}: no embedded mlperf.conf found in loadgen")
    start = data.rfind(b"\0", 0, marker) + 1
    end = data.find(b"\0", marker)
    return data[start:end].decode("utf-8")


def harness_version() -> dict[str, Any]:
    """The git commit of this checkout and whether it had uncommitted changes; "unknown" outside git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def run_facts(*, scenario: str, accuracy: bool, audit_conf: Path | None, backend: str,
              record: Mapping[str, Any], seeds: Mapping[str, int], samples: int, dataset_rows: int) -> dict[str, Any]:
    """The JSON record of one run (plain values only)."""
    return {
        "command": [sys.executable, *sys.argv],
        "cwd": str(Path.cwd()),
        "scenario": scenario,
        "mode": "accuracy" if accuracy else "performance",
        "audit_conf": str(audit_conf) if audit_conf else None,
        "backend": backend,
        "harness": harness_version(),
        "loadgen": {"version": loadgen_version(), "seeds": dict(seeds)},
        "samples": samples,  # the rows this run used (--total-sample-count)
        "dataset_rows": dataset_rows,  # the rows in the dataset file
        "made_from": dict(record),
    }


def write_run_files(output_dir: Path, facts: Mapping[str, Any], user_conf: Path, mlperf_conf: Path | None,
                    audit_conf: Path | None) -> None:
    """harness_run.json, the user.conf and mlperf.conf the run used (and the --mlperf-conf and
    audit.config given), written into the run's output folder before the test starts."""
    try:
        (output_dir / MLPERF_CONF_FILE).write_text(embedded_mlperf_conf(), encoding="utf-8")
        for source, name in ((user_conf, USER_CONF_FILE), (mlperf_conf, MLPERF_OVERRIDE_FILE),
                             (audit_conf, AUDIT_CONF_FILE)):
            target = output_dir / name
            if source is None:
                target.unlink(missing_ok=True)  # left by an earlier run in this folder: not this run's
            elif not (target.exists() and target.samefile(source)):
                shutil.copyfile(source, target)
        (output_dir / RUN_FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ProvenanceError(f"{output_dir}: cannot record the run's configs ({exc.strerror or exc})") from None


def read_run_facts(run_dir: Path) -> dict[str, Any]:
    """harness_run.json of a run folder; ProvenanceError names the file when absent or unreadable."""
    path = run_dir / RUN_FACTS_FILE
    try:
        facts = read_json_file(path, "a run of this harness writes it; rerun with it")
    except JsonFileError as exc:
        raise ProvenanceError(str(exc)) from None
    if not isinstance(facts, dict) or not isinstance(facts.get("made_from"), dict):
        raise ProvenanceError(f"{path}: not a run record of this harness (no made_from)")
    return facts
