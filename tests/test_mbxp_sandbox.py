"""Containment: each hostile answer is a real process that must end as a failure, in time, leaving no
process and no folder behind; and missing toolchains are named before anything runs."""

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from harness.evaluation.mbxp import MbxpTask, missing_toolchains, run_mbxp
from harness.evaluation.mbxp.confine import landlock_abi
from harness.evaluation.mbxp.sandbox import MAX_RESULT_CHARS

RUN_TIMEOUT_S = 3.0
TIME_ALLOWED_S = 20.0  # timeout + compile (g++ takes a few seconds on a busy machine) + cleanup

CPP_FORK_BOMB = "#include <unistd.h>\nvoid f() { while (true) fork(); }\n"
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


def _processes_in(root: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.cwd().startswith(str(root)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _check_contained(lang: str, response: str, test_code: str = "") -> str:
    root = Path(tempfile.gettempdir())
    start = time.monotonic()
    [verdict] = run_mbxp([MbxpTask("hostile", lang, "f", response, test_code)], n_workers=1, progress=False,
                         run_timeout_s=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert not verdict.passed, verdict.result
    assert elapsed < TIME_ALLOWED_S
    assert psutil.Process().children(recursive=True) == []
    assert _processes_in(root) == []
    assert list(root.glob("mbxp-*")) == []
    return verdict.result


def test_cpp_fork_bomb_is_stopped():
    result = _check_contained("cpp", CPP_FORK_BOMB, CPP_MAIN)
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
        if lang == "python" and not landlock_abi():
            continue  # python answers may run as the test's user (see sandbox.py); only Landlock stops them
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
