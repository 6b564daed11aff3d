"""Execute one python answer the way the reference checker does, in this (already confined) process.

Run as a script (standard library only):
    python -I -B python_child.py PROGRAM_FILE TIMEOUT_S VERDICT_FILE
and writes "passed", "failed: <exception>" or "timed out" to VERDICT_FILE.

As in the reference: the program is exec'd with empty globals (so `__name__` is "builtins" and an
`if __name__ == "__main__":` block does not run), printed output is discarded and reading stdin fails,
a wall-clock alarm stops it after TIMEOUT_S, and before it runs the builtins and os/shutil/subprocess
functions that end, kill, spawn or delete things are replaced by None (so `exit(0)` fails with
"'NoneType' object is not callable", while `sys.exit(0)` raises SystemExit and gives "failed: 0").
These guards are not a security boundary on their own; the process also runs under confine.py.
"""

from __future__ import annotations

import builtins
import faulthandler
import io
import os
import shutil
import signal
import subprocess
import sys

_DISABLED = {
    builtins: ("exit", "quit", "help"),
    os: ("kill", "killpg", "system", "putenv", "fork", "forkpty", "setuid", "remove", "removedirs", "rmdir",
         "unlink", "rename", "renames", "replace", "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown",
         "lchown", "lchflags", "chroot", "chdir", "fchdir", "getcwd"),
    shutil: ("rmtree", "move", "chown"),
    subprocess: ("Popen",),
}
_BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class _Timeout(Exception):
    pass


class _DiscardOutput(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


class _NoInput(io.StringIO):
    def read(self, *args: object) -> str:
        raise OSError

    def readline(self, *args: object) -> str:
        raise OSError

    def readlines(self, *args: object) -> list[str]:
        raise OSError


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _disable_dangerous_functions() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    faulthandler.disable()
    for owner, names in _DISABLED.items():
        for name in names:
            if hasattr(owner, name):
                setattr(owner, name, None)
    for module in _BLOCKED_MODULES:
        sys.modules[module] = None  # type: ignore[assignment]  # makes `import module` fail


def check(program: str, timeout_s: float) -> str:
    sys.stdout, sys.stderr, sys.stdin = _DiscardOutput(), _DiscardOutput(), _NoInput()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        exec(program, {})
        return "passed"
    except _Timeout:
        return "timed out"
    except BaseException as error:  # SystemExit and KeyboardInterrupt too: the reference reports them
        return f"failed: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str]) -> None:
    program_file, timeout_s, verdict_file = argv[1], float(argv[2]), argv[3]
    with open(program_file, encoding="utf-8") as source:
        program = source.read()
    with open(verdict_file, "w", encoding="utf-8") as verdict:  # opened before the guards and the program
        _disable_dangerous_functions()
        verdict.write(check(program, timeout_s))
    # Skip interpreter shutdown: threads or atexit handlers the program left must not change the verdict.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
