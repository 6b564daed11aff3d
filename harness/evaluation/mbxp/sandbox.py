"""Small pieces that run one untrusted command: a fresh folder, limits, a process group that is killed.

What a check gets:
- a fresh temporary folder (its working directory, HOME and TMPDIR), removed afterwards;
- its own session and process group; on timeout, and again after every run, the whole group is
  SIGKILLed, and we wait until no live member is left;
- limits, via confine.py: CPU time, address space, size of any file written (stderr included), the
  number of tasks of its user, no core dumps, no new privileges (setuid binaries do not elevate);
- when the kernel offers Landlock: writes allowed only inside its folder (and to /dev/null), TCP bind
  and connect refused, and (ABI 6+) no signals to processes outside the sandbox;
- when the harness runs as root: the unprivileged user "nobody", so files of other users and root's
  files cannot be changed even without Landlock. Python answers too, unless "nobody" cannot run the
  harness's interpreter (e.g. a pyenv under /root): then they run as root, still with Landlock (where
  available), the limits, and the reference's guards (python_child.py);
- stdin empty, stdout discarded, and an environment of PATH, HOME, TMPDIR, LANG and NODE_PATH only.

What it does not provide: no container, namespaces or seccomp. A check can read every file its user
can read, and can use UDP and unix sockets (TCP too without Landlock ABI 4); the checks need no
network, but nothing cuts it off. Without Landlock (older kernels, some container seccomp profiles) a
check may write wherever its user may: as "nobody", world-writable places such as /tmp; when the
harness is not root, the harness user's own files; and python answers that run as root are then
held back only by the reference's guards. A process that calls setsid() leaves the group that is
killed (it still dies at its CPU-time limit unless it sleeps). Concurrent checks share one user, so
one check exhausting the task limit can make another check's fork fail.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from harness.evaluation.mbxp import confine

logger = logging.getLogger(__name__)

CONFINE_SCRIPT = Path(confine.__file__)
MEMORY_BYTES = 4 << 30  # address space; node and tsc run well within it
FILE_BYTES = 64 << 20  # largest file a check may write
TASKS_PER_WORKER = 64  # processes + threads one check may need: node has ~11, g++ ~4 processes
MAX_RESULT_CHARS = 10_000  # stderr kept in a verdict
GROUP_EXIT_WAIT_S = 5.0


@dataclass(frozen=True)
class Confinement:
    """What every check of one run_mbxp call shares."""

    user: tuple[int, int] | None  # (uid, gid) to switch to; None when the harness is not root
    tasks: int  # RLIMIT_NPROC, counted over all processes and threads of the user
    python_as_user: bool  # whether `user` can run this interpreter (not when it lives under /root)

    @classmethod
    def for_workers(cls, n_workers: int) -> Confinement:
        """Raises RuntimeError when a confined process cannot even start (confine.py fails here)."""
        user = _unprivileged_user() if os.geteuid() == 0 else None
        uid = user[0] if user else os.getuid()
        # The limit counts every task of the uid, so start from what it already runs.
        confinement = cls(user, _count_tasks(uid) + TASKS_PER_WORKER * (n_workers + 1), python_as_user=True)
        if user is not None and _probe(confinement).returncode != 0:
            confinement = replace(confinement, python_as_user=False)
        probe = _probe(confinement.for_python())
        if probe.returncode != 0:
            raise RuntimeError(f"MBXP checks cannot run confined: {probe.stderr or probe.returncode}")
        return confinement

    def for_python(self) -> Confinement:
        return self if self.python_as_user else replace(self, user=None)

    def describe(self) -> str:
        who = f"as uid {self.user[0]}" if self.user else f"as the harness user (uid {os.getuid()})"
        if self.user and not self.python_as_user:
            who += f" (python answers as uid {os.getuid()}: uid {self.user[0]} cannot run {sys.executable})"
        abi = confine.landlock_abi()
        landlock = f"Landlock ABI {abi}: writes only in the check's folder" if abi else "no Landlock"
        return f"checks run {who}, {landlock}, at most {self.tasks} tasks"


def _probe(confinement: Confinement) -> RunOutcome:
    """Starts the interpreter that runs python answers, as a python answer would be."""
    with check_folder(confinement) as folder:
        return run_confined((sys.executable, "-I", "-B", "-c", "pass"), folder, 30.0, confinement)


@dataclass(frozen=True)
class RunOutcome:
    returncode: int | None  # None: timed out
    stderr: str


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


def run_confined(command: Sequence[str], folder: Path, timeout_s: float, confinement: Confinement,
                 node_path: str = "") -> RunOutcome:
    """Runs command in folder under confine.py; returncode None when it ran past timeout_s."""
    spec = {"cpu_s": int(2 * timeout_s) + 5, "memory_bytes": MEMORY_BYTES, "file_bytes": FILE_BYTES,
            "tasks": confinement.tasks, "user": confinement.user, "writable_dir": str(folder)}
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(folder), "TMPDIR": str(folder),
           "LANG": "C.UTF-8", "NODE_PATH": node_path}
    wrapper = [sys.executable, "-I", "-B", str(CONFINE_SCRIPT), json.dumps(spec), *command]
    with tempfile.TemporaryFile() as stderr:  # outside the folder, so the program cannot replace it
        process = subprocess.Popen(wrapper, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _kill_group(process)
        stderr.seek(0)
        text = stderr.read(4 * MAX_RESULT_CHARS).decode("utf-8", errors="replace")[:MAX_RESULT_CHARS]
    return RunOutcome(returncode, text)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group (start_new_session made its id the leader's pid), reap the leader,
    then wait for the other members, which init reaps, to be gone."""
    pgid = process.pid
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + GROUP_EXIT_WAIT_S
    while _live_members(pgid):
        if time.monotonic() > deadline:
            logger.warning("processes of group %d survive SIGKILL", pgid)
            return
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.02)


def _live_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            # Fields after the ")" that ends the command name: state, ppid, pgrp, ...
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False
