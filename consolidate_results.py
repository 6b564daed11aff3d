"""Merge an accuracy run's journal (run_outputs/*.pkl) into the dataset: generated ids, text,
length and per-row ROUGE, saved as one pickle for inspection."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dataset import DatasetError, load_dataset_frame
from harness.evaluation.consolidation import ConsolidationError, collect_outputs, consolidate, read_run_outputs
from harness.evaluation.inputs import dataset_or_demo, tokenizer_model_for
from harness.evaluation.sentences import install_punkt_tab
from harness.output_dirs import OUTPUT_DIR_EXIT_STATUS, OutputDirError, ensure_writable_dir
from harness.tokenizer import load_sentencepiece

log = logging.getLogger("consolidate_results")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-path", type=Path, help="dataset pickle (default: the demo dataset)")
    parser.add_argument("--run-outputs", type=Path, default=Path("run_outputs"),
                        help="folder of the run's q*.pkl journal files")
    parser.add_argument("--output-pkl-path", type=Path, default=Path("full_output.pkl"),
                        help="where the merged dataset goes")
    parser.add_argument("--checkpoint-path", type=Path,
                        help="Mixtral checkpoint folder whose tokenizer.model decodes the outputs "
                             "(default: the bundled Mixtral tokenizer)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Path:
    ensure_writable_dir(args.output_pkl_path.parent, "--output-pkl-path")
    try:
        tokenizer_model = tokenizer_model_for(args.checkpoint_path)
    except ValueError as exc:
        raise ConsolidationError(str(exc)) from None
    frame = load_dataset_frame(dataset_or_demo(args.dataset_path))
    outputs = collect_outputs(read_run_outputs(args.run_outputs), len(frame))
    install_punkt_tab()
    merged = consolidate(frame, outputs, load_sentencepiece(tokenizer_model), progress=not args.no_progress)
    merged.to_pickle(args.output_pkl_path)
    return args.output_pkl_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = run(args)
    except OutputDirError as exc:
        print(f"consolidate_results.py: error: {exc}", file=sys.stderr)
        return OUTPUT_DIR_EXIT_STATUS
    except (ConsolidationError, DatasetError, OSError) as exc:
        print(f"consolidate_results.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"Consolidated {args.run_outputs} into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
