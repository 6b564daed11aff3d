"""`python -m tools.submission run`: every run one scenario of a submission needs, in one folder.

DIR/performance/   the loadgen performance run
DIR/accuracy/      the accuracy run, then evaluate-accuracy.py (accuracy.txt beside the log)
DIR/TEST06/run/    the TEST06 run; its verification in DIR/TEST06/ (the official verifier's layout)

Each step is a command of its own (main.py runs one loadgen test per process). DIR/steps.json
records the main.py flags and the steps finished, so a second call after a kill goes on at the
first unfinished step; an interrupted accuracy run continues from its journal (--resume).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.interrupts import handling_signals, signal_name

ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "steps.json"
TEST06_AUDIT = ROOT / "compliance" / "TEST06" / "audit.config"
# Flags this command sets itself for each step.
OWNED_FLAGS = ("--scenario", "--output-log-dir", "--accuracy", "--audit-conf", "--resume")


class RunsError(Exception):
    """The folder or flags cannot be used; the message is one line."""


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    log_dir: Path  # the folder the step writes to (for the progress line)


def owned_flag_in(flags: Sequence[str]) -> str | None:
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in OWNED_FLAGS:
            return name
    return None


def flag_value(flags: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in main.py's flags (the last one wins, as in argparse)."""
    value = None
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
    return value


def plan(scenario: str, output_dir: Path, main_flags: Sequence[str], resume_accuracy: bool) -> list[Step]:
    """The five steps of one scenario, in order."""
    python, main = sys.executable, str(ROOT / "main.py")
    flags = list(main_flags)
    accuracy_dir, test06_run = output_dir / "accuracy", output_dir / "TEST06" / "run"
    evaluate_inputs = []
    if (model := flag_value(flags, "--model-path")) is not None:
        evaluate_inputs += ["--checkpoint-path", model]
    if (dataset := flag_value(flags, "--dataset-path")) is not None:
        evaluate_inputs += ["--dataset-file", dataset]
    return [
        Step("performance run", [python, main, "--scenario", scenario, "--output-log-dir",
                                 str(output_dir / "performance"), *flags], output_dir / "performance"),
        Step("accuracy run", [python, main, "--scenario", scenario, "--accuracy", "--output-log-dir",
                              str(accuracy_dir), *(["--resume"] if resume_accuracy else []), *flags], accuracy_dir),
        Step("accuracy scoring", [python, str(ROOT / "evaluate-accuracy.py"), "--mlperf-accuracy-file",
                                  str(accuracy_dir / "mlperf_log_accuracy.json"), "--no-progress",
                                  *evaluate_inputs], accuracy_dir),
        Step("TEST06 run", [python, main, "--scenario", scenario, "--audit-conf", str(TEST06_AUDIT),
                            "--output-log-dir", str(test06_run), *flags], test06_run),
        Step("TEST06 verification", [python, str(ROOT / "compliance" / "TEST06" / "run_verification.py"),
                                     "-c", str(test06_run), "-o", str(output_dir), "-s", scenario],
             output_dir / "TEST06"),
    ]


def read_state(output_dir: Path, scenario: str, main_flags: list[str]) -> dict[str, list[str]]:
    """The steps already finished in this folder and the commands that ran them; refuses a folder
    made with other flags."""
    path = output_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        recorded = (state["scenario"], state["main_flags"], dict(state["done"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunsError(f"{path}: not a steps record of this tool ({exc}); use a new --output-dir") from None
    if recorded[:2] != (scenario, main_flags):
        raise RunsError(f"{path}: this folder holds runs of --scenario {recorded[0]} with main.py flags "
                        f"{' '.join(recorded[1]) or '(none)'}; use those, or a new --output-dir")
    return recorded[2]


def write_state(output_dir: Path, scenario: str, main_flags: list[str], done: dict[str, list[str]]) -> None:
    """done: each finished step and the command that ran it (a submission's README quotes them)."""
    path = output_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    record = {"scenario": scenario, "main_flags": main_flags, "done": done}
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)  # a kill mid-write leaves the previous record, never half of one


class StepRunner:
    """Runs the steps one at a time, holding SIGTERM and SIGINT for the whole run: a signal at any
    moment, during a step, while one starts or between two, ends the running step (SIGTERM is
    passed on; Ctrl-C reaches the step directly, it is in the terminal's process group) and no
    further step starts. With a handler installed only around each step, a SIGTERM between two
    killed this process outright and could leave a step just started running on its own."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.signum: int | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signum = signum
        if signum == signal.SIGTERM and self.child is not None:
            self.child.send_signal(signum)

    def holding_signals(self) -> contextlib.AbstractContextManager[None]:
        return handling_signals(self._on_signal)

    def run(self, command: list[str]) -> int:
        """The step's exit status, the shell's way (128 + N when a signal ended it)."""
        self.child = subprocess.Popen(command, cwd=ROOT)
        if self.signum == signal.SIGTERM:  # it came while the step was being started
            self.child.send_signal(signal.SIGTERM)
        status = self.child.wait()
        return status if status >= 0 else 128 - status


def run_all(scenario: str, output_dir: Path, main_flags: list[str]) -> int:
    """Runs the steps not yet finished; the exit status of the first that fails, else 0."""
    if (flag := owned_flag_in(main_flags)) is not None:
        raise RunsError(f"{flag}: set by this command for each step; leave it out of the main.py flags")
    output_dir.mkdir(parents=True, exist_ok=True)
    done = read_state(output_dir, scenario, main_flags)
    journal = output_dir / "accuracy" / "run_outputs"
    steps = plan(scenario, output_dir, main_flags, resume_accuracy=journal.is_dir() and any(journal.iterdir()))
    write_state(output_dir, scenario, main_flags, done)
    runner = StepRunner()
    with runner.holding_signals():
        for number, step in enumerate(steps, start=1):
            prefix = f"[{number}/{len(steps)}] {scenario} {step.name}"
            if step.name in done:
                print(f"{prefix}: done before, kept ({step.log_dir})", flush=True)
                continue
            if runner.signum is not None:
                print(f"error: {signal_name(runner.signum)} before {prefix}; run the same command again to continue "
                      "from this step", file=sys.stderr, flush=True)
                return 128 + runner.signum
            print(f"{prefix}: running -> {step.log_dir}", flush=True)
            status = runner.run(step.command)
            if status != 0:
                print(f"error: {prefix} failed (exit {status}); run the same command again to continue from this "
                      "step", file=sys.stderr, flush=True)
                return status
            done[step.name] = step.command
            write_state(output_dir, scenario, main_flags, done)
    print(f"{scenario}: every run a submission needs is in {output_dir} "
          f"(next: python -m tools.submission build --runs {output_dir} ...)", flush=True)
    return 0
