"""Run one untrusted command confined, and leave nothing of it alive: the supervisor of one check.

Run as a script (standard library only, so it starts fast and needs nothing from the harness):
    python -I -B confine.py SPEC_JSON COMMAND [ARG...]
SPEC_JSON: {"cpu_s", "memory_bytes", "file_bytes", "tasks", "user": [uid, gid] or null, "writable_dir",
"timeout_s", "cgroup": {"parent", "memory_bytes"} or a false value}.

This process (the supervisor) becomes a child subreaper, so every process the command starts, a
detached or setsid one included, stays its descendant (orphans are re-parented to it, not to init).
With "cgroup", it makes a cgroup v2 group under "parent" whose processes may hold "memory_bytes" in
all (no swap; on overrun the kernel kills them all), and removes it at the end.
It forks the command's process, which confines itself before exec: the cgroup, resource limits, no_new_privs,
Landlock (when the kernel offers it) so that only `writable_dir` (and /dev/null) can be written,
TCP connect/bind is refused and signals cannot leave the sandbox, then, when started as root, the
switch to the unprivileged `user`. When the command exits, after `timeout_s`, or when the supervisor
receives SIGTERM (the harness stopping its checks), it SIGKILLs and reaps every descendant left,
until it has no child at all, then ends:
- with the command's exit status (128 + N when signal N killed it);
- on timeout or SIGTERM, by SIGKILL from itself, which no exit status of the command can look like.
The supervisor never runs untrusted code, and as root it cannot be signalled by the checks.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import tempfile
import time
from contextlib import suppress

# Linux syscall numbers, the same on every architecture for syscalls added after 5.x.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights that change something (reading and executing stay unrestricted).
_FS_WRITE_FILE = 1 << 1
_FS_WRITE_RIGHTS_V1 = _FS_WRITE_FILE | sum(1 << bit for bit in range(4, 13))  # remove_*, make_*
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # ABI 4: bind, connect
_SCOPES = (1 << 0) | (1 << 1)  # ABI 6: abstract unix sockets, signals

EXEC_FAILED = 127  # the command could not be started; its reason is on stderr


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is packed: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(*args: object) -> int:
    """libc's syscall(); ints widened to long, pointers (ctypes.byref) passed as they are."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return _check(libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args]))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when unavailable (old kernel, disabled, or seccomp-blocked)."""
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, 0, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:
        return 0


def _restrict_writes(writable_dir: str, abi: int) -> None:
    fs_rights = _FS_WRITE_RIGHTS_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs_rights, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    # The struct grew with the ABI; an older kernel rejects the fields it does not know.
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset_fd = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    for path, rights in ((writable_dir, fs_rights), ("/dev/null", fs_rights & (_FS_WRITE_FILE | _FS_TRUNCATE))):
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = _PathBeneathAttr(rights, path_fd)
        _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(path_fd)
    _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0)
    os.close(ruleset_fd)


def _set_limits(spec: dict) -> None:
    # Soft CPU limit sends SIGXCPU, the hard one a second later SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (spec["cpu_s"], spec["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_bytes"], spec["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (spec["tasks"], spec["tasks"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


_AWAITED = {signal.SIGCHLD, signal.SIGTERM}  # blocked in the supervisor, taken by sigtimedwait


def _confine_and_exec(spec: dict, command: list[str], group: str | None) -> None:
    """In the forked child: confine this process, then become the command."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _AWAITED)  # the mask survives exec
    if group:
        with open(os.path.join(group, "cgroup.procs"), "w") as procs:
            procs.write("0")  # this process; its descendants are born in the group
    _set_limits(spec)
    # no_new_privs: setuid binaries (su, sudo) cannot undo the user switch below; Landlock also requires it.
    _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    abi = landlock_abi()
    if abi:
        _restrict_writes(spec["writable_dir"], abi)
    if spec["user"] is not None:
        uid, gid = spec["user"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.execv(command[0], command)


def _wait(pid: int, timeout_s: float) -> int | None:
    """The wait status of child `pid`, None when it ran past timeout_s or SIGTERM came first (both are
    blocked, so that sigtimedwait wakes at any child's exit, those of re-parented orphans only
    causing another look, and at SIGTERM)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        received = signal.sigtimedwait(_AWAITED, remaining)
        if received is not None and received.si_signo == signal.SIGTERM:
            return None


def _descendants() -> list[int]:
    """Every process below this one, from the parent links in /proc (a moment's view)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with suppress(OSError, ValueError, IndexError), open(f"/proc/{name}/stat") as stat:
                # Fields after the ")" that ends the command name: state, ppid, ...
                children.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
    found, unvisited = [], [os.getpid()]
    while unvisited:
        below = children.get(unvisited.pop(), [])
        found += below
        unvisited += below
    return found


def _end_descendants() -> None:
    """SIGKILL and reap every process left below this one until it has no child at all. As the
    subreaper it inherits every orphan, so when it has no child, no descendant is left. All are
    killed at once, not generation by generation, which a fork bomb would outrun. Killing by number
    is safe: the kernel hands pids out cyclically, so one is reused only after all others (pid_max)
    have been, not in the moment between the scan and the kill."""
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap those that ended
                pass
        except ChildProcessError:
            return
        for pid in _descendants():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)  # for the killed to end


def _make_group(cgroup: dict) -> str:
    group = tempfile.mkdtemp(prefix="mbxp-", dir=cgroup["parent"])
    for name, value in (("memory.max", cgroup["memory_bytes"]), ("memory.swap.max", 0), ("memory.oom.group", 1)):
        path = os.path.join(group, name)
        if name == "memory.max" or os.path.exists(path):  # swap accounting may be off
            with open(path, "w") as control:
                control.write(str(value))
    return group


def main(argv: list[str]) -> None:
    spec, command = json.loads(argv[1]), argv[2:]
    _check(_libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
    # Until here SIGTERM ends this process by default, which is right: it has made nothing yet.
    signal.pthread_sigmask(signal.SIG_BLOCK, _AWAITED)
    group = _make_group(spec["cgroup"]) if spec.get("cgroup") else None
    pid = os.fork()
    if pid == 0:
        try:
            _confine_and_exec(spec, command, group)
        except BaseException as error:  # nothing of the supervisor's code may run in this child
            os.write(2, f"confine.py: cannot start {command[0]}: {error}\n".encode(errors="replace"))
        finally:
            os._exit(EXEC_FAILED)
    status = _wait(pid, spec["timeout_s"])
    _end_descendants()
    if group:
        with suppress(OSError):  # empty now: every process of it has been reaped
            os.rmdir(group)
    if status is None:
        os.kill(os.getpid(), signal.SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv)
