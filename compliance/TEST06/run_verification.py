"""Verify a TEST06 run: EOS, first-token and sample-length checks over its accuracy log.

Usage: python compliance/TEST06/run_verification.py -c <TEST06 log dir> -o <output dir> -s Offline|Server
Writes <output dir>/TEST06/verify_accuracy.txt and copies the log to
<output dir>/TEST06/accuracy/mlperf_log_accuracy.json, the layout of MLCommons' verifier and of a
submission's results folder. Exit status: 0 passed, 1 a check failed, 2 unusable input or output
(one line naming the file or folder).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.json_files import JsonFileError, read_json_file  # noqa: E402
from harness.output_dirs import OUTPUT_DIR_EXIT_STATUS, OutputDirError, ensure_writable_dir  # noqa: E402
from harness.test06 import verification_lines  # noqa: E402

FAILED = 1
UNUSABLE = OUTPUT_DIR_EXIT_STATUS
LOG_NAME = "mlperf_log_accuracy.json"


class UnusableInput(Exception):
    """The compliance folder or its accuracy log cannot be verified; the message is one line."""


def read_entries(compliance_dir: Path) -> list[dict]:
    if not compliance_dir.is_dir():
        raise UnusableInput(f"-c {compliance_dir}: not a folder")
    log_path = compliance_dir / LOG_NAME
    try:
        entries = read_json_file(log_path, "run TEST06 with --audit-conf first")
    except JsonFileError as exc:
        raise UnusableInput(str(exc)) from None
    if not isinstance(entries, list) or not entries:
        raise UnusableInput(f"{log_path}: holds no accuracy entries (a loadgen accuracy log is a non-empty list)")
    return entries


def write_report(output_dir: Path, lines: list[str], log_path: Path) -> None:
    test_dir = ensure_writable_dir(ensure_writable_dir(output_dir, "-o") / "TEST06", "-o")
    accuracy_dir = ensure_writable_dir(test_dir / "accuracy", "-o")
    report = test_dir / "verify_accuracy.txt"
    try:
        report.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if not (accuracy_dir / LOG_NAME).exists() or not (accuracy_dir / LOG_NAME).samefile(log_path):
            shutil.copy2(log_path, accuracy_dir / LOG_NAME)
    except OSError as exc:
        raise UnusableInput(f"{output_dir}: cannot write the TEST06 report ({exc.strerror or exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--compliance-dir", type=Path, required=True,
                        help="folder of the TEST06 run (holds mlperf_log_accuracy.json)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True,
                        help="writes TEST06/verify_accuracy.txt and TEST06/accuracy/ here")
    parser.add_argument("-s", "--scenario", choices=("Offline", "Server"), required=True)
    args = parser.parse_args(argv)

    try:
        entries = read_entries(args.compliance_dir)
        log_path = args.compliance_dir / LOG_NAME
        try:
            lines, passed = verification_lines(entries, args.scenario)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnusableInput(f"{log_path}: not a loadgen accuracy log ({type(exc).__name__}: {exc})") from None
        write_report(args.output_dir, lines, log_path)
    except (UnusableInput, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNUSABLE
    print("\n".join(lines))
    return 0 if passed else FAILED



if __name__ == "__main__":
    sys.exit(main())
