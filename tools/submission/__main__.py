"""python -m tools.submission run|build: make a scenario's runs, or build the v6.0 submission tree.

  python -m tools.submission run --scenario Offline --output-dir runs/offline [main.py flags]
  python -m tools.submission build --runs runs/offline runs/server --system-json my_system.json \
      --submitter ACME --division closed --output submission
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.submission.runs import RunsError, run_all
from tools.submission.tree import MEASUREMENT_FIELDS, TreeError, build_tree, read_json

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.submission", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="performance, accuracy (scored) and TEST06 (verified) runs of one scenario",
                              description="Unknown flags go to main.py (e.g. --backend vllm --model-path DIR).")
    run.add_argument("--scenario", choices=("Offline", "Server"), required=True)
    run.add_argument("--output-dir", type=Path, required=True,
                     help="gets performance/, accuracy/ and TEST06/; run again to continue after a kill")
    build = commands.add_parser("build", help="the v6.0 submission tree from run folders of one system")
    build.add_argument("--runs", type=Path, nargs="+", required=True, help="folders made by `run`, one per scenario")
    build.add_argument("--system-json", type=Path, required=True,
                       help="the system description; its file name (without .json) names the system")
    build.add_argument("--submitter", required=True)
    build.add_argument("--division", choices=("closed", "open"), required=True)
    build.add_argument("--output", type=Path, required=True, help="the tree's root (gets {division}/{submitter}/)")
    build.add_argument("--measurements-json", type=Path,
                       help=f"fields to set in measurements.json ({', '.join(MEASUREMENT_FIELDS)}); by default "
                            "they come from the runs' records (int32 inputs, the run's dtype, no transformation)")
    return parser


def read_measurements(path: Path | None) -> dict[str, object]:
    if path is None:
        return {}
    fields = read_json(path, "--measurements-json")
    if not isinstance(fields, dict) or (unknown := sorted(set(fields) - set(MEASUREMENT_FIELDS))):
        raise TreeError(f"{path}: measurements fields are {', '.join(MEASUREMENT_FIELDS)}"
                        + (f"; not {', '.join(unknown)}" if isinstance(fields, dict) else ""))
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, main_flags = parser.parse_known_args(argv)
    try:
        if args.command == "run":
            return run_all(args.scenario, args.output_dir, main_flags)
        if main_flags:
            parser.error(f"unrecognized arguments: {' '.join(main_flags)}")
        results, warnings = build_tree(args.runs, args.system_json, args.submitter, args.division, args.output,
                                       read_measurements(args.measurements_json))
    except (RunsError, TreeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(f"Built {results}; check it with MLCommons' submission checker (README, Submitting results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
