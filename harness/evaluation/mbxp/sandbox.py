"""Small pieces that run one untrusted command: a fresh folder, a supervisor that confines it and
leaves nothing of it alive, the interpreter that runs python answers.

What a check gets:
- a fresh temporary folder (its working directory, HOME and TMPDIR), removed afterwards;
- a supervisor (confine.py) that is a child subreaper: every process the command starts, however
  detached (setsid, double fork, node's detached spawn), stays below it and is SIGKILLed and
  reaped when the command exits or times out, before the check returns;
- limits: CPU time, address space, size of any file written (stderr included), the number of
  tasks of its user, no core dumps, no new privileges (setuid binaries do not elevate);
- when the kernel offers Landlock: writes allowed only inside its folder (and to /dev/null), TCP bind
  and connect refused, no ptrace of processes outside it, and (ABI 6+) no signals to them;
- when the harness runs as root: the unprivileged user "nobody", python answers included (they
  run with an interpreter of the harness's Python version that "nobody" can run: the harness's own,
  or the system's when the harness's lives in a folder closed to others, such as /root);
- stdin empty, stdout discarded, and an environment of PATH, HOME, TMPDIR, LANG and NODE_PATH only.

What it does not provide: no container, namespaces or seccomp. A check can read every file its user
can read, and can use UDP and unix sockets (TCP too without Landlock ABI 4); the checks need no
network, but nothing cuts it off. Without Landlock (older kernels, some container seccomp profiles) a
check may write wherever its user may: as "nobody", world-writable places such as /tmp; when the
harness is not root, the harness user's own files (and it could ptrace the harness). A process
started by another program at the check's request (a system daemon) is not its descendant.
Concurrent checks share one user, so one check exhausting the task limit can make another check's
fork fail.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.evaluation.mbxp import confine

logger = logging.getLogger(__name__)

CONFINE_SCRIPT = Path(confine.__file__)
MEMORY_BYTES = 4 << 30  # address space; node and tsc run well within it
FILE_BYTES = 64 << 20  # largest file a check may write
TASKS_PER_WORKER = 64  # processes + threads one check may need: node has ~11, g++ ~4 processes
MAX_RESULT_CHARS = 10_000  # stderr kept in a verdict
SUPERVISOR_GRACE_S = 10.0  # beyond a check's timeout, for the supervisor to start and clean up
PYTHON_VERSION = sys.version_info[:2]


@dataclass(frozen=True)
class RunOutcome:
    returncode: int | None  # None: timed out
    stderr: str
    stdout_tail: bytes = b""  # the end of stdout, when run_confined was asked to keep it


class ChecksStopped(BaseException):
    """A check was to start a command after its run was stopped. Not an Exception: like an
    interrupt, it is no checker error and must not be scored as one."""


class Supervisors:
    """The running supervisors of a group of checks, so that an interrupted run can end them at once
    rather than wait for every check to end by itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    @contextmanager
    def started(self, command: Sequence[str], **popen_args: object) -> Iterator[subprocess.Popen]:
        """Popen(command, **popen_args), known as running until the block ends. Raises ChecksStopped
        after stop()."""
        with self._lock:  # so that no supervisor starts unseen by a concurrent stop()
            if self._stopped:
                raise ChecksStopped
            process = subprocess.Popen(command, **popen_args)
            self._running.add(process)
        try:
            yield process
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        """Ends every running check (each supervisor kills its command's processes and exits) and
        refuses new ones; the threads waiting on them return within moments."""
        with self._lock:
            self._stopped = True
            for process in self._running:
                _stop_supervisor(process)

    @contextmanager
    def stopped_on_error(self) -> Iterator[None]:
        """Any exception leaving the block (an interrupt above all) first stops the checks, so that
        a thread pool left next waits moments for its workers, not for all their checks."""
        try:
            yield
        except BaseException:
            self.stop()
            raise


def _stop_supervisor(process: subprocess.Popen) -> None:
    # SIGTERM, not SIGKILL: the supervisor must live to kill its descendants, which would otherwise
    # be re-parented to init and run on.
    with suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)


@dataclass(frozen=True)
class Confinement:
    """What every check of one run_mbxp call shares."""

    user: tuple[int, int] | None  # (uid, gid) to switch to; None when the harness is not root
    tasks: int  # RLIMIT_NPROC, counted over all processes and threads of the user
    python: str = ""  # the interpreter for python answers ("" when none are checked)
    python_path: tuple[str, ...] = ()  # the harness's packages, added to sys.path when python is another
    supervisors: Supervisors = field(default_factory=Supervisors, compare=False)

    @classmethod
    def for_workers(cls, n_workers: int, python_answers: bool = True,
                    supervisors: Supervisors | None = None) -> Confinement:
        """Raises RuntimeError when no interpreter for python answers can run confined."""
        user = _unprivileged_user() if os.geteuid() == 0 else None
        uid = user[0] if user else os.getuid()
        # The limit counts every task of the uid, so start from what it already runs.
        confinement = cls(user, _count_tasks(uid) + TASKS_PER_WORKER * (n_workers + 1),
                          supervisors=supervisors or Supervisors())
        return confinement.with_python() if python_answers else confinement

    def with_python(self) -> Confinement:
        """The first candidate interpreter that runs confined, as this user, at this Python version."""
        failures = []
        for candidate in _python_candidates():
            with check_folder(self) as folder:
                probe = run_confined((candidate, "-I", "-B", "-c", _VERSION_CHECK), folder, 30.0, self)
            if probe.returncode == 0:
                own = candidate == sys.executable
                return replace(self, python=candidate, python_path=() if own else _harness_site_packages())
            reason = probe.stderr.strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
            failures.append(f"{candidate}: {reason[0]}")
        who = f"uid {self.user[0]}" if self.user else "the harness user"
        raise RuntimeError(f"no Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]} that {who} can run for the python "
                           f"answers ({'; '.join(failures)}); install one where that user can read it (Debian: "
                           f"apt-get install python{PYTHON_VERSION[0]}.{PYTHON_VERSION[1]})")

    def describe(self) -> str:
        who = f"as uid {self.user[0]}" if self.user else f"as the harness user (uid {os.getuid()})"
        python = f", python answers with {self.python}" if self.python else ""
        abi = confine.landlock_abi()
        landlock = f"Landlock ABI {abi}: writes only in the check's folder" if abi else "no Landlock"
        return f"checks run {who}{python}, {landlock}, at most {self.tasks} tasks"


_VERSION_CHECK = (f"import sys; v = sys.version_info[:2]; v == {PYTHON_VERSION} or "
                  f"sys.exit(f'Python {{v[0]}}.{{v[1]}}, not {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}')")


def _python_candidates() -> list[str]:
    """The harness's interpreter, then the system's of the same version."""
    name = f"python{PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}"
    paths = [sys.executable, shutil.which(name), f"/usr/local/bin/{name}", f"/usr/bin/{name}"]
    candidates, seen = [], set()
    for path in paths:
        if path and os.path.exists(path) and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            candidates.append(path)
    return candidates


def _harness_site_packages() -> tuple[str, ...]:
    # Python answers see the packages the harness has (numpy...), as in the reference, which runs them in-process.
    return tuple(path for path in site.getsitepackages() if os.path.isdir(path))


def _unprivileged_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _count_tasks(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
    return count


@contextmanager
def check_folder(confinement: Confinement) -> Iterator[Path]:
    """A fresh private folder, writable by the check's user, removed with all its content afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mbxp-"))
    try:
        if confinement.user:
            os.chown(path, *confinement.user)
        yield path
    finally:
        _remove_folder(path)


def _remove_folder(path: Path) -> None:
    # A program may have left folders without write or search permission (root ignores them).
    with suppress(OSError):
        os.chmod(path, 0o700)
    for folder, subfolders, _files in os.walk(path):
        for name in subfolders:
            subfolder = os.path.join(folder, name)
            if not os.path.islink(subfolder):
                with suppress(OSError):
                    os.chmod(subfolder, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        logger.warning("could not remove check folder %s", path)


def run_confined(command: Sequence[str], folder: Path, timeout_s: float, confinement: Confinement, *,
                 node_path: str = "", stdin: bytes = b"", keep_stdout: bool = False) -> RunOutcome:
    """Runs command in folder under confine.py, with `stdin` as its standard input; returncode None
    when it ran past timeout_s. When this returns, no process of the command is alive."""
    spec = {"cpu_s": int(2 * timeout_s) + 5, "memory_bytes": MEMORY_BYTES, "file_bytes": FILE_BYTES,
            "tasks": confinement.tasks, "user": confinement.user, "writable_dir": str(folder),
            "timeout_s": timeout_s}
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(folder), "TMPDIR": str(folder),
           "LANG": "C.UTF-8", "NODE_PATH": node_path}
    supervisor = [sys.executable, "-I", "-B", str(CONFINE_SCRIPT), json.dumps(spec), *command]
    # Output files outside the folder, so that the program cannot replace them.
    with tempfile.TemporaryFile() as stderr, (tempfile.TemporaryFile() if keep_stdout
                                              else nullcontext(subprocess.DEVNULL)) as stdout:
        # Its own session: a Ctrl-C at the terminal reaches the harness, which stops the checks.
        with confinement.supervisors.started(supervisor, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=stdout,
                                             stderr=stderr, start_new_session=True) as process:
            with suppress(BrokenPipeError):  # a pipe holds far more than the few bytes given here
                process.stdin.write(stdin)
            process.stdin.close()
            try:
                status = _wait_supervisor(process, timeout_s + SUPERVISOR_GRACE_S)
            except BaseException:  # an interrupt in this (main) thread: the command must not outlive the wait
                _stop_supervisor(process)
                process.wait()
                raise
        stderr.seek(0)
        text = stderr.read(4 * MAX_RESULT_CHARS).decode("utf-8", errors="replace")[:MAX_RESULT_CHARS]
        tail = _tail(stdout, 4 * MAX_RESULT_CHARS) if keep_stdout else b""
    # The supervisor ends by SIGKILL on timeout or stop (and when killed below); otherwise with the command's status.
    return RunOutcome(None if status == -signal.SIGKILL else status, text, tail)


def _wait_supervisor(process: subprocess.Popen, timeout_s: float) -> int:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("MBXP check supervisor %d overran its timeout; killing its process group", process.pid)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _tail(file, size: int) -> bytes:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read()
