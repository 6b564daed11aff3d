"""Small pieces that run one untrusted command: a fresh folder, a supervisor that confines it and
leaves nothing of it alive, the interpreter that runs python answers.

What a check gets:
- a fresh temporary folder (its working directory, HOME and TMPDIR), removed afterwards;
- a supervisor (confine.py) that is a child subreaper: every process the command starts, however
  detached (setsid, double fork, node's detached spawn), stays below it and is SIGKILLed and
  reaped when the command exits, times out, or the harness stops its checks (an interrupt), before
  the check returns;
- limits: CPU time, address space, size of any file written (stderr included), the number of
  tasks of its user, no core dumps, no new privileges (setuid binaries do not elevate);
- a bound on the memory all its processes hold together, chosen at run time (_memory_limits): a
  cgroup v2 group per check where this process can make one that limits memory (CGROUP_CHECK_BYTES);
  else, as root, TASKS_PER_CHECK tasks of RLIMIT_CHECK_BYTES / TASKS_PER_CHECK address space each;
  else (not root, no cgroup) none beyond each process's address space;
- when the kernel offers Landlock: writes allowed only inside its folder (and to /dev/null), TCP bind
  and connect refused, no ptrace of processes outside it, and (ABI 6+) no signals to them;
- when the harness runs as root: an unprivileged uid of its own, without an account, lent to one
  check at a time (so the task limit is the check's, and checks cannot signal one another), python
  answers included (they run with an interpreter of the harness's Python version that any user can
  run: the harness's own, or the system's when the harness's lives in a folder closed to others,
  such as /root);
- stdin empty, stdout discarded, and an environment of PATH, HOME, TMPDIR, LANG and NODE_PATH only.

What it does not provide: no container, namespaces or seccomp. A check can read every file any
user can read, and can use UDP and unix sockets (TCP too without Landlock ABI 4); the checks need no
network, but nothing cuts it off. Without Landlock (older kernels, some container seccomp profiles) a
check may write wherever its user may: world-writable places such as /tmp; when the harness is not
root, the harness user's own files (and it could ptrace the harness). A process started by another
program at the check's request (a system daemon) is not its descendant. When the harness is not
root, concurrent checks share its user, its task limit included, so one check exhausting it can
make another check's fork fail.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import queue
import random
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
PROCESS_MEMORY_BYTES = 4 << 30  # address space of one process, when a cgroup (or nothing) bounds the check
CGROUP_CHECK_BYTES = 4 << 30  # all processes of one check together, in a cgroup
# Without a cgroup: TASKS_PER_CHECK processes of RLIMIT_CHECK_BYTES / TASKS_PER_CHECK (1 GiB) address
# space each; node needs about 0.75 GiB of address space to start, and 7 to 11 threads.
RLIMIT_CHECK_BYTES = 16 << 30
TASKS_PER_CHECK = 16  # processes + threads one check may run: node ~11, g++ ~4 processes
# Far above the ids given to accounts (below 65536) and to containers' subordinate ranges (from 100000).
CHECK_UID_RANGE = (1 << 30, (1 << 31) - (1 << 16))
FILE_BYTES = 64 << 20  # largest file a check may write
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


class _UserPool:
    """One unprivileged user per concurrent check, lent for the length of one check."""

    def __init__(self, users: Sequence[tuple[int, int]]) -> None:
        self._free: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        for user in users:
            self._free.put(user)

    @contextmanager
    def lent(self) -> Iterator[tuple[int, int]]:
        user = self._free.get()
        try:
            yield user
        finally:
            self._free.put(user)


@dataclass(frozen=True)
class Confinement:
    """What every check of one run_mbxp call shares; check_folder() gives each check its own copy,
    with its own user."""

    user: tuple[int, int] | None  # (uid, gid) to switch to; None when the harness is not root (or not yet lent)
    tasks: int  # RLIMIT_NPROC, counted over all processes and threads of the user
    process_memory_bytes: int  # RLIMIT_AS of each process
    check_memory_bytes: int  # what one check's processes may hold together; 0: no bound
    memory_cgroup: str = ""  # cgroup v2 folder that holds a memory-limited group per check ("" when none)
    python: str = ""  # the interpreter for python answers ("" when none are checked)
    python_path: tuple[str, ...] = ()  # the harness's packages, added to sys.path when python is another
    supervisors: Supervisors = field(default_factory=Supervisors, compare=False)
    users: _UserPool | None = field(default=None, compare=False)  # as root: the users lent to checks

    @classmethod
    def for_workers(cls, n_workers: int, python_answers: bool = True, supervisors: Supervisors | None = None,
                    check_memory_bytes: int | None = None) -> Confinement:
        """The memory bound is chosen here, by what the machine allows (see _memory_limits).
        Raises RuntimeError when no interpreter for python answers can run confined."""
        cgroup = _memory_cgroup_parent()
        root = os.geteuid() == 0
        if root:
            users = _UserPool([(uid, uid) for uid in _unused_ids(n_workers)])
            tasks = TASKS_PER_CHECK
        else:
            users = None
            # The limit counts every task of the uid, so start from what it already runs.
            tasks = _count_tasks(os.getuid()) + TASKS_PER_CHECK * (n_workers + 1)
        process_bytes, check_bytes = _memory_limits(bool(cgroup), root, check_memory_bytes)
        confinement = cls(None, tasks, process_bytes, check_bytes, cgroup, supervisors=supervisors or Supervisors(),
                          users=users)
        return confinement.with_python() if python_answers else confinement

    def with_python(self) -> Confinement:
        """The first candidate interpreter that runs confined, as this user, at this Python version."""
        failures = []
        for candidate in _python_candidates():
            with check_folder(self) as (folder, check):
                probe = run_confined((candidate, "-I", "-B", "-c", _VERSION_CHECK), folder, 30.0, check)
            if probe.returncode == 0:
                own = candidate == sys.executable
                return replace(self, python=candidate, python_path=() if own else _harness_site_packages())
            reason = probe.stderr.strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
            failures.append(f"{candidate}: {reason[0]}")
        who = "an unprivileged uid" if self.users else "the harness user"
        raise RuntimeError(f"no Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]} that {who} can run for the python "
                           f"answers ({'; '.join(failures)}); install one where that user can read it (Debian: "
                           f"apt-get install python{PYTHON_VERSION[0]}.{PYTHON_VERSION[1]})")

    def describe(self) -> str:
        who = "each as a uid of its own" if self.users else f"as the harness user (uid {os.getuid()})"
        python = f", python answers with {self.python}" if self.python else ""
        abi = confine.landlock_abi()
        landlock = f"Landlock ABI {abi}: writes only in the check's folder" if abi else "no Landlock"
        gib = self.check_memory_bytes / (1 << 30)
        memory = (f"at most {gib:g} GiB per check (cgroup v2 {self.memory_cgroup})" if self.memory_cgroup else
                  f"at most {gib:g} GiB per check ({self.tasks} tasks of "
                  f"{self.process_memory_bytes >> 20} MiB address space)" if self.check_memory_bytes else
                  f"{self.process_memory_bytes >> 20} MiB address space per process, no bound per check")
        return f"checks run {who}{python}, {landlock}, at most {self.tasks} tasks, {memory}"


def _memory_limits(cgroup: bool, root: bool, check_bytes: int | None) -> tuple[int, int]:
    """(RLIMIT_AS per process, bound per check; 0 for none). With a cgroup the kernel counts all
    the check's memory; without, as root, each check's user may run TASKS_PER_CHECK tasks, each
    process within check_bytes / TASKS_PER_CHECK of address space, so all of them fit in
    check_bytes; without root the process limit is shared by every check, which bounds none."""
    if cgroup:
        check_bytes = check_bytes or CGROUP_CHECK_BYTES
        return min(PROCESS_MEMORY_BYTES, check_bytes), check_bytes
    if root:
        check_bytes = check_bytes or RLIMIT_CHECK_BYTES
        return check_bytes // TASKS_PER_CHECK, check_bytes
    return PROCESS_MEMORY_BYTES, 0


def _memory_cgroup_parent() -> str:
    """A cgroup v2 folder in which this process can make groups with a memory limit: its own group
    or that group's parent, whichever already hands the memory controller to its children (a group
    holding processes cannot start to); "" when none is (cgroup v1, a read-only /sys/fs/cgroup)."""
    try:
        own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        mount = next(fields[4] for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text()
                                               .splitlines()) if fields[fields.index("-") + 1] == "cgroup2")
    except (OSError, StopIteration, ValueError):
        return ""
    group = Path(mount) / own.lstrip("/")
    for candidate in (group, group.parent):
        if candidate.is_relative_to(mount) and _can_limit_memory(candidate):
            return str(candidate)
    return ""


def _can_limit_memory(parent: Path) -> bool:
    try:
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            return False
        probe = Path(tempfile.mkdtemp(prefix="mbxp-probe-", dir=parent))
    except OSError:
        return False
    try:
        (probe / "memory.max").write_text(str(CGROUP_CHECK_BYTES))
        return True
    except OSError:
        return False
    finally:
        with suppress(OSError):
            probe.rmdir()


def _unused_ids(count: int) -> list[int]:
    """`count` ids that no account and no running process has, from a random place of a range
    that systems leave unassigned, so that harness runs at the same time do not share them."""
    taken = _uids_running()
    chooser = random.SystemRandom()
    while True:
        first = chooser.randrange(*CHECK_UID_RANGE)
        ids = list(range(first, first + count))
        if not taken.intersection(ids) and not any(_has_account(uid) for uid in ids):
            return ids


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _uids_running() -> set[int]:
    uids = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        with suppress(OSError, StopIteration, ValueError):
            uids.add(int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1]))
    return uids


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


def _count_tasks(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with suppress(OSError):
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
    return count


@contextmanager
def check_folder(confinement: Confinement) -> Iterator[tuple[Path, Confinement]]:
    """A fresh private folder, removed with all its content afterwards, and the confinement of the
    one check that runs in it: as root, a user lent to it alone, who owns the folder."""
    with confinement.users.lent() if confinement.users else nullcontext(None) as user:
        path = Path(tempfile.mkdtemp(prefix="mbxp-"))
        try:
            if user:
                os.chown(path, *user)
            yield path, replace(confinement, user=user)
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
    spec = {"cpu_s": int(2 * timeout_s) + 5, "memory_bytes": confinement.process_memory_bytes,
            "file_bytes": FILE_BYTES, "tasks": confinement.tasks, "user": confinement.user,
            "writable_dir": str(folder), "timeout_s": timeout_s,
            "cgroup": confinement.memory_cgroup and {"parent": confinement.memory_cgroup,
                                                     "memory_bytes": confinement.check_memory_bytes}}
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
