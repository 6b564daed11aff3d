"""Execute one python answer the way the reference checker does, in this (already confined) process,
and report a pass in a way the answer cannot forge.

Run as a script (standard library only; numpy and pandas for answers that name them, see
_PRELOADED_MODULES), with a secret of the checker's on stdin:
    python -I -B python_child.py PROGRAM_FILE [SYS_PATH_DIR...]
A pass is the secret written to stdout and exit status 0; a failure is "failed: <exception>" on
stdout and exit status 1; the checker's supervisor stops a run that passes its timeout ("timed out").

As in the reference: the program is exec'd with empty globals (so `__name__` is "builtins" and an
`if __name__ == "__main__":` block does not run), printed output is discarded and reading stdin fails,
and before it runs the builtins and os/shutil/subprocess functions that end, kill, spawn or delete
things are replaced by None (so `exit(0)` fails with "'NoneType' object is not callable", while
`sys.exit(0)` raises SystemExit and gives "failed: 0"). The answer passes when exec returns.

Why a pass cannot be forged: the answer runs in this process and can do whatever this code can
(write any file descriptor, re-create the posix module and call _exit(0), read the locals of every
frame it reaches: its callers', and through hooks and finalizers those of any thread it can make
fail), so the verdict rests on a secret it cannot reach. The secret is read off stdin just before
exec, and lives only on the evaluation stack of the one statement that runs exec and then writes
it: no variable, attribute or other thread ever holds it, and Python code can read a frame's
locals but not its evaluation stack; there is no thread of the checker's whose failure would run
the answer's hooks. If exec raises, unwinding the stack drops the secret. An audit
hook (which Python code cannot remove) refuses the ways to raw memory and object lists: ctypes, the
garbage collector's object lists, other threads' frames, crafted code objects, and starting or
replacing processes through os and subprocess; and the process is not dumpable, so that neither
/proc/self/mem nor a process it still manages to start (_posixsubprocess raises no audit event) can
read it. Left open: whatever breaks CPython's memory safety from Python code (e.g. malformed
bytecode loaded with marshal).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import faulthandler
import importlib
import io
import os
import shutil
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
# The reference forks its checks from an evaluation process that has already imported these, so an
# answer's `import numpy` finds the module loaded; imported for the first time under the guards they
# fail (their import calls functions the guards disable). Loaded before the guards, and only for a
# program that names them: pandas alone takes most of a second to import.
_PRELOADED_MODULES = ("numpy", "pandas")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Audit events refused once the answer may run (see the module's docstring).
_REFUSED_EVENTS = frozenset({
    "sys._current_frames", "sys._current_exceptions", "sys.addaudithook", "sys.monitoring.register_callback",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
    "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
})
_PR_SET_DUMPABLE = 4
_SECRET_MAX_BYTES = 256


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


def _check(result: int) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _refuse(event: str, args: tuple) -> None:
    if event in _REFUSED_EVENTS or event.startswith("ctypes."):
        raise PermissionError(f"{event} is not allowed in an MBXP check")


def _disable_dangerous_functions() -> None:
    faulthandler.disable()
    for owner, names in _DISABLED.items():
        for name in names:
            if hasattr(owner, name):
                setattr(owner, name, None)
    for module in _BLOCKED_MODULES:
        sys.modules[module] = None  # type: ignore[assignment]  # makes `import module` fail


def _failure(error: BaseException) -> str:
    try:
        return f"failed: {error}"
    except BaseException:  # the answer's own exception type may fail to print
        return f"failed: {type(error).__name__}"


def main(argv: list[str]) -> None:
    with open(argv[1], encoding="utf-8") as source:
        program = source.read()
    sys.path.extend(argv[2:])
    # Before numpy loads: its BLAS would start a thread per core, more than a check's task limit allows.
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    for module in _PRELOADED_MODULES:
        if module in program:
            with contextlib.suppress(ImportError):  # not installed: the answer's import fails as it would anyway
                importlib.import_module(module)
    _check(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0))
    sys.addaudithook(_refuse)
    _disable_dangerous_functions()
    sys.stdout, sys.stderr, sys.stdin = _DiscardOutput(), _DiscardOutput(), _NoInput()
    # Bound before the answer runs: it can replace the os module's functions and the builtins.
    read, write, exit_now, run = os.read, os.write, os._exit, exec
    try:
        # The secret is read off stdin before exec, so the answer finds stdin empty, and is written
        # only once exec returned; meanwhile it exists only on this statement's evaluation stack.
        write(1, (read(0, _SECRET_MAX_BYTES), run(program, {}))[0])
    except BaseException as error:  # SystemExit and KeyboardInterrupt too: the reference reports them
        write(1, _failure(error).encode("utf-8", errors="replace"))
        exit_now(1)
    exit_now(0)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as setup_error:  # before the answer ran: say why, rather than look like a timeout
        os.write(1, f"failed: checker error: {setup_error}".encode("utf-8", errors="replace"))
        os._exit(1)
