"""Score an accuracy run of the Mixtral-8x7B harness exactly as the MLPerf reference does, offline.

Prints the reference's results line, a PASS/FAIL table against the official targets and a
per-language MBXP table; writes results.json and accuracy.txt (results line + log hash).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dataset import load_dataset_frame
from harness.evaluation.accuracy import evaluate, mbxp_languages_to_run, samples_by_part
from harness.evaluation.accuracy_log import DEFAULT_DTYPE, DTYPES, read_accuracy_log
from harness.evaluation.inputs import dataset_or_demo, tokenizer_model_for
from harness.evaluation.mbxp import SCORED_LANGUAGES, broken_toolchains
from harness.evaluation.report import (
    accuracy_txt,
    file_sha256,
    mbxp_table,
    ordered_results,
    results_line,
    targets_table,
    write_json,
)
from harness.evaluation.sentences import install_punkt_tab
from harness.evaluation.targets import check_targets
from harness.interrupts import HANDLED_SIGNALS, Interrupted, raising_interrupts
from harness.output_dirs import OUTPUT_DIR_EXIT_STATUS, OutputDirError, ensure_writable_dir
from harness.tokenizer import load_sentencepiece

log = logging.getLogger("evaluate-accuracy")


class UsageError(Exception):
    """A bad flag or input; main() prints the one-line message and exits 1."""


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-path", type=Path,
                        help="Mixtral checkpoint folder; its tokenizer.model decodes the outputs "
                             "(default: mistral-common's copy of the same file)")
    parser.add_argument("--mlperf-accuracy-file", type=Path, required=True, help="mlperf_log_accuracy.json")
    parser.add_argument("--dataset-file", type=Path, help="dataset pickle (default: the demo dataset)")
    parser.add_argument("--n_workers", type=int, default=2, help="parallel MBXP checks")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=DEFAULT_DTYPE,
                        help="token dtype of the log's data (the harness writes int32)")
    parser.add_argument("--output-dir", type=Path,
                        help="where accuracy.txt and results.json go (default: the accuracy log's folder)")
    parser.add_argument("--skip-languages", default="",
                        help="comma-separated MBXP languages not to run (reported as skipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(tokenizer.model, dataset pickle): the given ones, else the bundled tokenizer (the same
    file as Mixtral's) and the demo dataset."""
    try:
        return tokenizer_model_for(args.checkpoint_path), dataset_or_demo(args.dataset_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def validate_args(args: argparse.Namespace) -> list[str]:
    """The --skip-languages list; raises UsageError for bad flags."""
    if args.n_workers < 1:
        raise UsageError(f"--n_workers must be at least 1, got {args.n_workers}")
    skip = [lang.strip() for lang in args.skip_languages.split(",") if lang.strip()]
    unknown = sorted(set(skip) - set(SCORED_LANGUAGES))
    if unknown:
        raise UsageError(f"--skip-languages: {', '.join(unknown)} not among the scored MBXP languages "
                         f"({', '.join(sorted(SCORED_LANGUAGES))})")
    if args.dataset_file is not None and not args.dataset_file.is_file():
        raise UsageError(f"--dataset-file {args.dataset_file}: file not found")
    if not args.mlperf_accuracy_file.is_file():
        raise UsageError(f"--mlperf-accuracy-file {args.mlperf_accuracy_file}: file not found")
    return skip


def run(args: argparse.Namespace, skip: list[str]) -> dict[str, object]:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tokenizer_model, dataset_file = resolve_inputs(args)
    frame = load_dataset_frame(dataset_file)
    sp = load_sentencepiece(tokenizer_model)
    accuracy_log = read_accuracy_log(args.mlperf_accuracy_file, args.dtype, dataset_size=len(frame),
                                     vocab_size=sp.get_piece_size())
    seconds["load"] = time.perf_counter() - start

    # Before any scoring: a broken toolchain would otherwise fail every answer of its language.
    needed = mbxp_languages_to_run(frame, samples_by_part(frame, accuracy_log)["MBXP"], skip)
    broken = broken_toolchains(needed)
    if broken:
        problems = "; ".join(f"{lang}: {problem}" for lang, problem in broken.items())
        raise UsageError(f"MBXP toolchain broken: {problems} (or pass --skip-languages {','.join(broken)} "
                         "to leave those languages out, reported as skipped)")

    install_punkt_tab()
    evaluation = evaluate(frame, accuracy_log, sp, n_workers=args.n_workers, skip_languages=skip,
                          progress=not args.no_progress)
    seconds.update(evaluation.seconds)
    figures = ordered_results(evaluation.figures)
    log_sha256 = file_sha256(args.mlperf_accuracy_file)
    return {
        "results": figures,
        "checks": check_targets(figures),
        "mbxp_languages": evaluation.mbxp_languages,
        "rows": evaluation.rows,
        "duplicate_entries": accuracy_log.duplicate_count,
        "inputs": {"mlperf_accuracy_file": str(args.mlperf_accuracy_file), "dataset_file": str(dataset_file),
                   "tokenizer_model": str(tokenizer_model), "dtype": args.dtype, "skip_languages": skip},
        "accuracy_log_sha256": log_sha256,
        "seconds": {step: round(s, 3) for step, s in seconds.items()},
    }


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A SIGINT or SIGTERM during the block raises Interrupted once it is done. (Handlers, not the
    signal mask: a signal blocked in this thread would be taken by another, tqdm's monitor say, and
    its handler still run here at once.)"""
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: received.append(signum))
                for signum in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(received[0])


def report(summary: dict[str, object], output_dir: Path) -> None:
    """Prints the results, then writes them: should the writing still fail, they have been shown."""
    print("\nResults\n")
    print(results_line(summary["results"]))
    print()
    print(targets_table(summary["checks"]))
    if summary["mbxp_languages"]:
        print()
        print(mbxp_table(summary["mbxp_languages"]))
    with signals_deferred():  # both files whole, or neither
        write_json(output_dir / "results.json", summary)
        (output_dir / "accuracy.txt").write_text(accuracy_txt(summary["results"], summary["accuracy_log_sha256"]),
                                                 encoding="utf-8")
    print(f"\nWrote {output_dir / 'results.json'} and {output_dir / 'accuracy.txt'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # A signal ends the run where it is: the MBXP checks are stopped, their folders removed, and
        # nothing is written.
        with raising_interrupts():
            skip = validate_args(args)
            # Before any loading or scoring: a run must not end with results it cannot write.
            output_dir = ensure_writable_dir(args.output_dir or args.mlperf_accuracy_file.parent, "--output-dir")
            summary = run(args, skip)
            report(summary, output_dir)
    except Interrupted as exc:
        print(f"evaluate-accuracy.py: error: interrupted by {exc}", file=sys.stderr)
        return exc.exit_code
    except OutputDirError as exc:
        print(f"evaluate-accuracy.py: error: {exc}", file=sys.stderr)
        return OUTPUT_DIR_EXIT_STATUS
    # DatasetError and AccuracyLogError are ValueErrors; RuntimeError: the MBXP sandbox cannot start.
    except (UsageError, ValueError, OSError, RuntimeError) as exc:
        if args.verbose:
            log.exception("evaluation failed")
        print(f"evaluate-accuracy.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
