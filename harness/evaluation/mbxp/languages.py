"""How each language's program is compiled and run, and how the reference turns that into a verdict.

| lang | compile | run | passed when |
|---|---|---|---|
| cpp | g++ program.cpp -o program_cpp (no flags) | ./program_cpp | both exit 0 |
| javascript | - | node program.js | exit 0 |
| typescript | tsc program.ts --target es5 --lib es2016 | node program.js | tsc exits 2, run exits 0 |
| php | - | php program.php | exit 0 |
| ruby | - | ruby program.rb | exit 0 |
| python | - | exec in python_child.py | exec returns (no exception) |

tsc exit 2 means "type errors, JavaScript emitted anyway"; the reference counts only that status as
compiled, and the tests' `import * as assert from 'assert'` is a type error without @types/node.
Only exit codes count (stdout is discarded); the result string is the failing step's stderr.
Python answers print nothing either: their stdout carries python_child.py's verdict to the checker.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.evaluation.mbxp import python_child
from harness.evaluation.mbxp.programs import MbxpTask, assemble_program
from harness.evaluation.mbxp.sandbox import MAX_RESULT_CHARS, Confinement, RunOutcome, check_folder, run_confined
from harness.evaluation.mbxp.toolchains import Toolchains

COMPILE_TIMEOUT_S = 100.0
RUN_TIMEOUT_S = 20.0
TSC_COMPILED = 2
FAILED = "failed: "  # how python_child.py reports a failure


@dataclass(frozen=True)
class Steps:
    source: str  # file the program is written to
    compile: tuple[str, ...] | None
    compiled: Callable[[int], bool]
    run: tuple[str, ...]


def _always(returncode: int) -> bool:
    return True


def _steps(lang: str, tools: Toolchains) -> Steps:
    exe = tools.executables
    match lang:
        case "cpp":
            return Steps("program.cpp", (exe["g++"], "program.cpp", "-o", "program_cpp"),
                         lambda rc: rc == 0, ("./program_cpp",))
        case "typescript":
            tsc = (exe["node"], tools.tsc, "program.ts", "--target", "es5", "--lib", "es2016")
            return Steps("program.ts", tsc, lambda rc: rc == TSC_COMPILED, (exe["node"], "program.js"))
        case "javascript":
            return Steps("program.js", None, _always, (exe["node"], "program.js"))
        case "php":
            return Steps("program.php", None, _always, (exe["php"], "program.php"))
        case "ruby":
            return Steps("program.rb", None, _always, (exe["ruby"], "program.rb"))
    raise ValueError(f"no compile/run steps for language {lang!r}")


def _timed_out_message(command: tuple[str, ...], timeout_s: float) -> str:
    # The wording of Python's subprocess.TimeoutExpired, which is what the reference reports.
    return f"Command '{list(command)}' timed out after {timeout_s:g} seconds"


def check_compiled_language(task: MbxpTask, tools: Toolchains, confinement: Confinement,
                            run_timeout_s: float) -> tuple[bool, str]:
    steps = _steps(task.lang, tools)
    node_path = str(tools.node_modules)
    with check_folder(confinement) as (folder, check):
        (folder / steps.source).write_text(assemble_program(task), encoding="utf-8")
        if steps.compile:
            compiled = run_confined(steps.compile, folder, COMPILE_TIMEOUT_S, check, node_path=node_path)
            if compiled.returncode is None:
                return False, _timed_out_message(steps.compile, COMPILE_TIMEOUT_S)
            if not steps.compiled(compiled.returncode):
                return False, compiled.stderr
        ran = run_confined(steps.run, folder, run_timeout_s, check, node_path=node_path)
    if ran.returncode is None:
        return False, _timed_out_message(steps.run, run_timeout_s)
    return ran.returncode == 0, ran.stderr


def _python_verdict(ran: RunOutcome, secret: bytes) -> tuple[bool, str]:
    """Passed only with exit status 0 and the checker's secret at the end of stdout, which the
    answer cannot produce (see python_child.py); a run that left no failure message was killed
    (timeout, CPU or memory limit), which the reference reports as "timed out"."""
    if ran.returncode == 0 and ran.stdout_tail.endswith(secret):
        return True, "passed"
    text = ran.stdout_tail.decode("utf-8", errors="replace")
    failed_at = text.rfind(FAILED)
    if ran.returncode is None or failed_at < 0:
        return False, "timed out"
    return False, text[failed_at:][:MAX_RESULT_CHARS]


def check_python(task: MbxpTask, confinement: Confinement, run_timeout_s: float) -> tuple[bool, str]:
    secret = secrets.token_hex(16).encode()
    with check_folder(confinement) as (folder, check):
        # A copy inside the folder, so the unprivileged user can read it wherever the repository lives.
        child = shutil.copy(Path(python_child.__file__), folder / "python_child.py")
        (folder / "program.py").write_text(assemble_program(task), encoding="utf-8")
        command = (check.python, "-I", "-B", str(child), "program.py", *check.python_path)
        ran = run_confined(command, folder, run_timeout_s, check, stdin=secret, keep_stdout=True)
    return _python_verdict(ran, secret)
