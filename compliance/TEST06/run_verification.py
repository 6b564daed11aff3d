"""Verify a TEST06 run: EOS, first-token and sample-length checks over its accuracy log.

Usage: python compliance/TEST06/run_verification.py -c <TEST06 log dir> -o <output dir> -s Offline|Server
Writes <output dir>/verify_accuracy.txt. Exit status: 0 passed, 1 a check failed, 2 unusable input
or output (one line naming the file or folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.output_dirs import OUTPUT_DIR_EXIT_STATUS, OutputDirError, ensure_writable_dir  # noqa: E402
from harness.test06 import verification_lines  # noqa: E402

FAILED = 1
UNUSABLE = OUTPUT_DIR_EXIT_STATUS


class UnusableInput(Exception):
    """The compliance folder or its accuracy log cannot be verified; the message is one line."""


def read_entries(compliance_dir: Path) -> list[dict]:
    if not compliance_dir.is_dir():
        raise UnusableInput(f"-c {compliance_dir}: not a folder")
    log_path = compliance_dir / "mlperf_log_accuracy.json"
    try:
        entries = json.loads(log_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnusableInput(f"{log_path}: not found (run TEST06 with --audit-conf first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnusableInput(f"{log_path}: not readable as JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise UnusableInput(f"{log_path}: holds no accuracy entries (a loadgen accuracy log is a non-empty list)")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--compliance-dir", type=Path, required=True,
                        help="folder of the TEST06 run (holds mlperf_log_accuracy.json)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="where verify_accuracy.txt goes")
    parser.add_argument("-s", "--scenario", choices=("Offline", "Server"), required=True)
    args = parser.parse_args(argv)

    try:
        entries = read_entries(args.compliance_dir)
        output_dir = ensure_writable_dir(args.output_dir, "-o")
        try:
            lines, passed = verification_lines(entries, args.scenario)
        except (KeyError, TypeError, ValueError) as exc:
            log_path = args.compliance_dir / "mlperf_log_accuracy.json"
            raise UnusableInput(f"{log_path}: not a loadgen accuracy log ({type(exc).__name__}: {exc})") from None
        report = output_dir / "verify_accuracy.txt"
        try:
            report.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UnusableInput(f"{report}: cannot write ({exc.strerror or exc})") from None
    except (UnusableInput, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UNUSABLE
    print("\n".join(lines))
    return 0 if passed else FAILED


if __name__ == "__main__":
    sys.exit(main())
