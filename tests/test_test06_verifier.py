"""compliance/TEST06/run_verification.py as a user runs it: 0 passed, 1 a check failed, 2 unusable
input or output, with one line naming the file or folder and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.evaluation.accuracy_log import encode_entry_data
from harness.tokenizer import EOS_ID

pytestmark = pytest.mark.quick

ROOT = Path(__file__).resolve().parents[1]
VERIFIER = ROOT / "compliance" / "TEST06" / "run_verification.py"


def entry(ids: list[int]) -> dict:
    return {"seq_id": 0, "qsl_idx": 0, "data": encode_entry_data(ids, "int32"), "token_count": len(ids),
            "token_data": encode_entry_data(ids[:1], "int32")}


def write_log(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlperf_log_accuracy.json").write_text(content, encoding="utf-8")
    return folder


def verify(compliance_dir: Path, output_dir: Path, scenario: str = "Server") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERIFIER), "-c", str(compliance_dir), "-o", str(output_dir),
                           "-s", scenario], capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_passing_log(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", json.dumps([entry([330, 28705, EOS_ID]), entry([13])]))
    proc = verify(run, tmp_path / "out" / "verification")
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "verification" / "TEST06" / "verify_accuracy.txt").read_text()
    assert report.endswith("TEST06 verification complete\n") and report == proc.stdout
    copied = tmp_path / "out" / "verification" / "TEST06" / "accuracy" / "mlperf_log_accuracy.json"
    assert copied.read_bytes() == (run / "mlperf_log_accuracy.json").read_bytes()


def test_failed_check_exits_1(tmp_path: Path) -> None:
    run = write_log(tmp_path / "run", json.dumps([entry([330, EOS_ID, EOS_ID])]))
    proc = verify(run, tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert "EOS check pass: False" in (tmp_path / "out" / "TEST06" / "verify_accuracy.txt").read_text()


@pytest.mark.parametrize(("content", "says"), [
    (None, "not found"),
    ('[{"seq_id": 0, "data": "0100', "not readable as JSON"),
    ("[]", "holds no accuracy entries"),
    ('{"data": "01000000"}', "holds no accuracy entries"),
    ('[{"seq_id": 0, "qsl_idx": 0}]', "not a loadgen accuracy log (KeyError"),
    ('[{"data": "zz", "token_count": 1, "token_data": "zz"}]', "not a loadgen accuracy log (ValueError"),
])
def test_unusable_log_exits_2(tmp_path: Path, content: str | None, says: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        write_log(run, content)
    message = one_line_error(verify(run, tmp_path / "out"))
    assert f"{run / 'mlperf_log_accuracy.json'}: {says}" in message


def test_missing_compliance_folder_exits_2(tmp_path: Path) -> None:
    assert f"-c {tmp_path / 'absent'}: not a folder" in one_line_error(verify(tmp_path / "absent", tmp_path / "out"))


@pytest.mark.parametrize("output", ["/proc/test06-out", "file"])
def test_unwritable_output_exits_2_before_anything_is_written(tmp_path: Path, output: str) -> None:
    (tmp_path / "file").write_text("keep me")
    target = Path(output) if output.startswith("/") else tmp_path / output
    run = write_log(tmp_path / "run", json.dumps([entry([330, EOS_ID])]))
    message = one_line_error(verify(run, target))
    assert message.startswith(f"error: -o {target}: ")
    assert (tmp_path / "file").read_text() == "keep me"
