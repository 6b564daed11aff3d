"""Verify a TEST06 run: EOS, first-token and sample-length checks over its accuracy log.

Usage: python compliance/TEST06/run_verification.py -c <TEST06 log dir> -o <output dir> -s Offline|Server
Writes <output dir>/verify_accuracy.txt; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.test06 import verification_lines  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--compliance-dir", type=Path, required=True,
                        help="folder of the TEST06 run (holds mlperf_log_accuracy.json)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="where verify_accuracy.txt goes")
    parser.add_argument("-s", "--scenario", choices=("Offline", "Server"), required=True)
    args = parser.parse_args(argv)

    log_path = args.compliance_dir / "mlperf_log_accuracy.json"
    try:
        entries = json.loads(log_path.read_text())
        lines, passed = verification_lines(entries, args.scenario)
    except FileNotFoundError:
        print(f"error: {log_path}: not found (run TEST06 with --audit-conf first)", file=sys.stderr)
        return 2
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        print(f"error: {log_path}: not a loadgen accuracy log ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "verify_accuracy.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
