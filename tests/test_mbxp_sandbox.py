"""Containment: each hostile answer is a real process that must end as a failure, in time, leaving no
process and no folder behind; nothing it starts outlives its check, it reads nothing private, cannot
forge a pass, and missing or broken toolchains are named before anything runs."""

import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from harness.evaluation.mbxp import MbxpTask, broken_toolchains, missing_toolchains, run_mbxp
from harness.evaluation.mbxp.confine import landlock_abi
from harness.evaluation.mbxp.sandbox import MAX_RESULT_CHARS
from tests.processes import processes_in

RUN_TIMEOUT_S = 3.0
# Only catches a check that waits on what an answer left running (its daemons sleep 600 s); a
# timeout, a compile on a busy machine and the cleanup take far less.
TIME_ALLOWED_S = 120.0

CPP_FORK_BOMB = "#include <unistd.h>\nvoid f() { while (true) fork(); }\n"
CPP_SESSION_FORK_BOMB = "#include <unistd.h>\nvoid f() { while (true) if (fork() == 0) setsid(); }\n"
CPP_MAIN = "int main() { f(); return 0; }\n"


@pytest.fixture(autouse=True)
def check_root(monkeypatch, tmp_path_factory):
    """Check folders go to a folder of this test, so that checks run by others at the same time (their
    folders are also /tmp/mbxp-*) are not mistaken for ours."""
    tmp_path_factory.getbasetemp()  # pytest's own folders stay in the real temp folder
    root = Path(tempfile.mkdtemp(prefix="mbxp-test-"))
    root.chmod(0o755)  # the checks' unprivileged user must reach its folder inside
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root)


def _check_contained(lang: str, response: str, test_code: str = "", **limits: int) -> str:
    root = Path(tempfile.gettempdir())
    start = time.monotonic()
    [verdict] = run_mbxp([MbxpTask("hostile", lang, "f", response, test_code)], n_workers=1, progress=False,
                         run_timeout_s=RUN_TIMEOUT_S, **limits)
    elapsed = time.monotonic() - start
    assert not verdict.passed, verdict.result
    assert elapsed < TIME_ALLOWED_S
    assert psutil.Process().children(recursive=True) == []
    assert processes_in(root) == []
    assert list(root.glob("mbxp-*")) == []
    return verdict.result


@pytest.mark.parametrize("bomb", [CPP_FORK_BOMB, CPP_SESSION_FORK_BOMB], ids=["fork", "fork and setsid"])
def test_cpp_fork_bomb_is_stopped(bomb):
    result = _check_contained("cpp", bomb, CPP_MAIN)
    assert "timed out" in result


@pytest.mark.parametrize(("lang", "response"), [
    ("python", "def f():\n    pass\nwhile True:\n    pass\n"),
    ("ruby", "loop { }\n"),
    ("javascript", "while (true) {}\n"),
])
def test_infinite_loop_times_out(lang, response):
    result = _check_contained(lang, response)
    assert "timed out" in result


@pytest.mark.parametrize(("lang", "response"), [
    ("python", "while True:\n    print('x' * 100000)\n"),
    ("ruby", "loop { puts 'x' * 100000 }\n"),
    ("cpp", "#include <cstdio>\nvoid f() { for (;;) fputs(\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n\", stdout); }\n"),
])
def test_stdout_flood_is_discarded_until_the_timeout(lang, response):
    result = _check_contained(lang, response, CPP_MAIN if lang == "cpp" else "")
    assert "timed out" in result


def test_stderr_flood_is_capped():
    result = _check_contained("ruby", "loop { $stderr.write('y' * 100000) }\n")
    assert len(result) <= MAX_RESULT_CHARS


@pytest.mark.parametrize(("lang", "response"), [
    ("python", "with open('big', 'w') as f:\n    while True:\n        f.write('x' * 1000000)\n"),
    ("ruby", "File.open('big', 'w') { |f| loop { f.write('x' * 1_000_000) } }\n"),
    ("cpp", "#include <cstdio>\n#include <string>\n"
            "void f() { FILE* o = fopen(\"big\", \"w\"); std::string s(1000000, 'x');\n"
            "  for (;;) if (fwrite(s.data(), 1, s.size(), o) != s.size()) throw 1; }\n"),
])
def test_huge_file_write_fails_at_the_size_limit(lang, response):
    result = _check_contained(lang, response, CPP_MAIN if lang == "cpp" else "")
    # Stopped at the file-size limit (64 MiB: milliseconds of writing), not by the run timeout.
    assert "timed out" not in result


CHECK_MEMORY_BYTES = 4 << 30  # small enough: without a cgroup, 16 tasks of 256 MiB (enough for g++)
CHILD_MEMORY_MIB = 64


def _memory_holders(children: int) -> str:
    """A cpp program whose `children` each fill CHILD_MEMORY_MIB of memory and keep it (stopped)
    once they have left a marker file; it waits until each has left its marker or ended, says on
    stderr how many hold their memory, and exits 0 only if all of them do."""
    return ("#include <cstdio>\n#include <cstdlib>\n#include <cstring>\n#include <fcntl.h>\n"
            "#include <sys/wait.h>\n#include <unistd.h>\n"
            f"const int wanted = {children};\n"
            "const char* marker(int i) { static char name[32]; snprintf(name, sizeof name, \"held-%d\", i); "
            "return name; }\n"
            "int held() { int n = 0; for (int i = 0; i < wanted; i++) n += access(marker(i), F_OK) == 0; "
            "return n; }\n"
            "int main() {\n  int forked = 0, ended = 0;\n"
            "  for (int i = 0; i < wanted; i++, forked++) {\n"
            "    pid_t pid = fork();\n    if (pid < 0) break;\n"
            f"    if (pid == 0) {{\n      size_t size = (size_t) {CHILD_MEMORY_MIB} << 20;\n"
            "      char* kept = (char*) malloc(size);\n      if (!kept) _exit(1);\n      memset(kept, 1, size);\n"
            "      close(open(marker(i), O_CREAT | O_WRONLY, 0600));\n      for (;;) pause();\n    }\n  }\n"
            "  while (held() + ended < forked) {\n"
            "    if (waitpid(-1, nullptr, WNOHANG) > 0) ended++; else usleep(10000);\n  }\n"
            "  fprintf(stderr, \"held %d\\n\", held());\n  return held() == wanted ? 0 : 1;\n}\n")


def test_children_within_the_memory_bound_all_hold_their_memory():
    [verdict] = run_mbxp([MbxpTask("within", "cpp", "f", _memory_holders(4), "")], n_workers=1, progress=False,
                         check_memory_bytes=CHECK_MEMORY_BYTES)
    assert verdict.passed, verdict.result


def test_children_cannot_hold_more_than_the_checks_memory_bound_together():
    children = (CHECK_MEMORY_BYTES >> 20) // CHILD_MEMORY_MIB + 16  # together well over the bound
    result = _check_contained("cpp", _memory_holders(children), check_memory_bytes=CHECK_MEMORY_BYTES)
    held = re.search(r"held (\d+)", result)
    # Stopped by the process limit (no cgroup) or killed by the kernel (cgroup): then nothing is said.
    assert held is None or int(held.group(1)) * CHILD_MEMORY_MIB << 20 <= CHECK_MEMORY_BYTES, result


def _write_programs(target: Path) -> list[tuple[str, str, str]]:
    """Programs that write `target` and report the error on stderr when they cannot."""
    return [
        ("cpp", f'#include <cstdio>\nvoid f() {{ FILE* o = fopen("{target}", "w"); '
                'if (!o) { perror("fopen"); throw 1; } fputs("x", o); }\n', CPP_MAIN),
        ("php", f'<?php\nif (@file_put_contents("{target}", "x") === false) {{\n'
                '  fwrite(STDERR, error_get_last()["message"]); exit(1);\n}\n', ""),
        ("ruby", f'File.write("{target}", "x")\n', ""),
        ("javascript", f'require("fs").writeFileSync("{target}", "x");\n', ""),
        ("python", f'open("{target}", "w").write("x")\n', ""),
    ]


@pytest.mark.skipif(os.geteuid() != 0 and not landlock_abi(),
                    reason="without root (to switch user) or Landlock a check runs as the test's user")
def test_write_to_another_users_folder_fails(tmp_path):
    target = tmp_path / "written-by-a-check"  # pytest's folder, private to the test's user
    for lang, response, test_code in _write_programs(target):
        result = _check_contained(lang, response, test_code)
        assert "permission denied" in result.lower(), (lang, result)
        assert not target.exists(), lang


@pytest.mark.skipif(not landlock_abi(), reason="only Landlock keeps a check from writing in the shared /tmp")
def test_write_to_shared_tmp_fails():
    target = Path("/tmp") / f"mbxp-outside-{uuid.uuid4().hex}"
    try:
        for lang, response, test_code in _write_programs(target):
            result = _check_contained(lang, response, test_code)
            assert "permission denied" in result.lower(), (lang, result)
            assert not target.exists(), lang
    finally:
        target.unlink(missing_ok=True)


def test_missing_tools_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MBXP_NODE_PREFIX", str(tmp_path))
    missing = "\n".join(missing_toolchains(["cpp", "php", "ruby", "javascript", "typescript", "python"]))
    for tool in ("g++", "php", "ruby", "node", "typescript", "lodash"):
        assert tool in missing
    assert "bash tools/install_eval_toolchains.sh" in missing
    with pytest.raises(RuntimeError, match="g\\+\\+ not found"):
        run_mbxp([MbxpTask("k", "cpp", "f", "", "")], n_workers=1, progress=False)


def test_python_needs_no_toolchain(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing_toolchains(["python"]) == []


def test_unscored_language_rejected():
    with pytest.raises(ValueError, match="unscored"):
        run_mbxp([MbxpTask("k", "go", "f", "", "")], n_workers=1, progress=False)


def _processes_with(token: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and token in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _escape_programs(token: str) -> list[tuple[str, str, str]]:
    """Programs that leave a shell behind in a session of its own (`token` names it) and exit 0 once
    it runs (it creates the file "started")."""
    arguments = f'"-c", ": > started; sleep 600; :", "{token}"'
    wait_until_started = {"cpp": '  while (access("started", F_OK) != 0) usleep(1000);\n',
                          "ruby": 'sleep 0.001 until File.exist?("started")\n',
                          "php": 'while (!file_exists("started")) { usleep(1000); clearstatcache(); }\n'}
    return [
        ("javascript", f'require("child_process").spawn("/bin/sh", [{arguments}], '
                       '{detached: true, stdio: "ignore"}).unref();\n', ""),
        ("cpp", "#include <unistd.h>\nvoid f() {\n"
                f'  if (fork() == 0) {{ setsid(); execl("/bin/sh", "sh", {arguments}, (char*) 0); }}\n'
                + wait_until_started["cpp"] + "}\n", CPP_MAIN),
        ("ruby", f'Process.detach(fork {{ Process.setsid; exec("/bin/sh", {arguments}) }})\n'
                 + wait_until_started["ruby"], ""),
        ("php", f"<?php\nexec(\"setsid /bin/sh -c ': > started; sleep 600; :' {token} > /dev/null 2>&1 &\");\n"
                + wait_until_started["php"], ""),
        ("python", "import importlib.util\nposix = importlib.util.module_from_spec(importlib.util.find_spec('posix'))\n"
                   f"if posix.fork() == 0:\n    posix.setsid()\n    posix.execv('/bin/sh', ['sh', {arguments}])\n", ""),
    ]


@pytest.mark.parametrize(("lang", "response", "test_code"), _escape_programs("mbxp-escapee"),
                         ids=lambda value: value if value in ("javascript", "cpp", "ruby", "php", "python") else "")
def test_nothing_the_answer_starts_outlives_its_check(lang, response, test_code):
    root = Path(tempfile.gettempdir())
    token = f"mbxp-escapee-{uuid.uuid4().hex}"  # this test's survivor only, not another run's
    task = MbxpTask("escape", lang, "f", response.replace("mbxp-escapee", token), test_code)
    [verdict] = run_mbxp([task], n_workers=1, progress=False, run_timeout_s=RUN_TIMEOUT_S)
    survivors = _processes_with(token)
    for process in survivors:  # should the test fail: leave nothing behind
        for member in [*process.children(recursive=True), process]:
            member.kill()
    assert survivors == [], verdict
    assert processes_in(root) == []
    if lang == "python":  # python answers may start no process at all
        assert "os.fork is not allowed" in verdict.result
    else:
        assert verdict.passed, verdict.result  # the program itself exited 0: a pass, as in the reference


@pytest.mark.parametrize(("lang", "response", "test_code"), [
    ("python", "print(open('/etc/shadow').read())\n", ""),
    ("cpp", '#include <cstdio>\nvoid f() { FILE* i = fopen("/etc/shadow", "r"); if (!i) { perror("fopen"); '
            "throw 1; } }\n", CPP_MAIN),
    ("ruby", 'puts File.read("/etc/shadow")\n', ""),
    ("javascript", 'console.log(require("fs").readFileSync("/etc/shadow", "utf8"));\n', ""),
])
def test_private_files_stay_unread(lang, response, test_code):
    assert "permission denied" in _check_contained(lang, response, test_code).lower()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a harness running as root switches the checks' user")
def test_python_answers_run_unprivileged_wherever_the_interpreter_lives():
    task = MbxpTask("uid", "python", "f", "import os\ndef f():\n    return os.geteuid()\n",
                    "def check(candidate):\n    assert candidate() != 0\n")
    [verdict] = run_mbxp([task], n_workers=1, progress=False)
    assert verdict.passed, verdict.result


FAILING_TEST = "def check(candidate):\n    assert False\n"
FORGERIES = {  # each tries to make a failing answer pass; afterwards the test itself fails
    "verdict file and os._exit": "import os\nfor name in ('verdict.txt', 'verdict', 'result.txt'):\n"
                                 "    open(name, 'w').write('passed')\nos._exit(0)\n",
    "stdout and a re-created _exit": "import importlib.util\n"
                                     "posix = importlib.util.module_from_spec(importlib.util.find_spec('posix'))\n"
                                     "for fd in range(1, 64):\n    try:\n        posix.write(fd, b'passed')\n"
                                     "    except OSError:\n        pass\nposix._exit(0)\n",
    "the secret from stdin": "import os, importlib.util\n"
                             "posix = importlib.util.module_from_spec(importlib.util.find_spec('posix'))\n"
                             "posix.write(1, os.read(0, 256))\nposix._exit(0)\n",
    "the wrapper's own frames": "import sys\nmain = sys._getframe().f_back.f_locals\n"
                                "main['write'](1, b'passed')\nmain['exit_now'](0)\n",
    "its memory": "open('/proc/self/mem', 'rb')\n",
    "other threads' frames": "import sys\nsys._current_frames()\n",
    "the garbage collector": "import gc\ngc.get_objects()\n",
    "ctypes": "import ctypes\nctypes.CDLL(None).exit(0)\n",
    "a signal during the failure report": "import signal, sys\n"
                                          "signal.signal(signal.SIGALRM, lambda *args: sys.exit(0))\n"
                                          "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
}


@pytest.mark.parametrize("attempt", list(FORGERIES))
def test_a_python_answer_cannot_forge_a_pass(attempt):
    [verdict] = run_mbxp([MbxpTask("forge", "python", "f", FORGERIES[attempt], FAILING_TEST)], n_workers=1,
                         progress=False, run_timeout_s=RUN_TIMEOUT_S)
    assert not verdict.passed and verdict.result != "passed", verdict.result


# The checker's secret is 32 bytes (languages.check_python). This reads every local of every frame
# it can reach (its callers', and those of the traceback it is handed) and, on finding 32 bytes,
# writes them as the verdict and ends the process with status 0. `_provoke` makes the pipe that the
# checker's former keeper thread waited on fail under it (as an adversarial review did), so that the
# thread's exception, whose traceback held the secret, reached the answer's hooks.
HARVEST = (
    "import os, sys, threading, time\n"
    "def _harvest(tb=None, frame=None):\n"
    "    frames, frame = [], frame or sys._getframe()\n"
    "    while frame:\n        frames.append(frame)\n        frame = frame.f_back\n"
    "    while tb:\n        frames.append(tb.tb_frame)\n        tb = tb.tb_next\n"
    "    for frame in frames:\n"
    "        for value in list(frame.f_locals.values()):\n"
    "            if isinstance(value, bytes) and len(value) == 32:\n"
    "                os.write(1, value)\n                os._exit(0)\n"
    "def _provoke():\n"
    "    frame = sys._getframe()\n"
    "    while frame:\n"
    "        names = frame.f_locals\n"
    "        if 'told_fd' in names and 'tell_fd' in names:\n"
    "            os.write(names['tell_fd'], b'!')\n            os.close(names['told_fd'])\n"
    "        frame = frame.f_back\n"
)
HOOKS = {  # each installs its hook, provokes, and leaves the hook time to run before the test fails
    "sys.unraisablehook": "sys.unraisablehook = lambda args: _harvest(args.exc_traceback)\n",
    "threading.excepthook": "threading.excepthook = lambda args: _harvest(args.exc_traceback)\n"
                            "threading.Thread(target=lambda: 1 / 0).start()\n",
    "sys.excepthook": "sys.excepthook = lambda kind, error, tb: _harvest(tb)\n",
    "atexit": "import atexit\natexit.register(_harvest)\n",
    "__del__": "class _Cycle:\n    def __del__(self):\n        _harvest()\n"
               "for _ in range(10000):\n    _cycle = _Cycle()\n    _cycle.me = _cycle\n",
    "a trace function on the checker's frame": "def _trace(frame, event, arg):\n    _harvest(frame=frame)\n"
                                               "    return _trace\n"
                                               "sys._getframe(1).f_trace = _trace\n"
                                               "sys._getframe(1).f_trace_opcodes = True\n"
                                               "sys.settrace(_trace)\n",
    "a profile function": "sys.setprofile(lambda frame, event, arg: _harvest(frame=frame))\n",
}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_a_python_answer_cannot_reach_the_secret_through_hooks(hook):
    response = HARVEST + HOOKS[hook] + "_provoke()\ntime.sleep(1)\n"
    [verdict] = run_mbxp([MbxpTask("hook", "python", "_harvest", response, FAILING_TEST)], n_workers=1,
                         progress=False, run_timeout_s=RUN_TIMEOUT_S)
    assert not verdict.passed and verdict.result != "passed", verdict.result


@pytest.mark.parametrize(("absent", "named"), [("as", "as"), ("ld", "ld")])
def test_a_broken_cpp_toolchain_is_named_before_scoring(check_root, monkeypatch, absent, named):
    # g++ itself is on PATH, but not the assembler or the linker it runs.
    bin_dir = check_root / "bin"  # where the checks' user can reach it
    bin_dir.mkdir()
    for tool in {"g++", "ruby", "as", "ld"} - {absent}:
        (bin_dir / tool).symlink_to(os.path.realpath(shutil.which(tool)))
    monkeypatch.setenv("PATH", str(bin_dir))
    broken = broken_toolchains(["cpp", "ruby", "python"])
    assert list(broken) == ["cpp"], broken
    assert re.search(f"[‘']{named}[’']", broken["cpp"]), broken["cpp"]
