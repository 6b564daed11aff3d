"""Write a synthetic dataset in the real 12-column schema, for scale tests without the real data.

Rows are split equally between OpenOrca, GSM8K and MBXP (5,000 each at the default 15,000), with
random token ids in [3, 32000) after the literal "<s> [INST]" prefix and lengths drawn to
resemble the real set: inputs up to 2,048 tokens, reference outputs averaging about 145 tokens.
Text columns are placeholders; only the token columns are realistic.

    python -m tools.synth_dataset --output /tmp/synth.pkl [--rows 15000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataset import DATASET_COLUMNS, VOCAB_SIZE
from harness.backends.protocol import EOS_ID, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MBXP_STOP_IDS

logger = logging.getLogger(__name__)

PROMPT_PREFIX = (1, 1, 28705, 733, 16289, 28793)  # "<s> [INST]" as the dataset tokenizes it
FIRST_RANDOM_ID = 3  # after <unk>, <s>, </s>
PARTS = ("OpenOrca", "GSM8K", "MBXP")
SCORED_LANGUAGES = ("cpp", "python", "php", "javascript", "ruby", "typescript")
UNSCORED_LANGUAGES = ("java", "go", "kotlin")
UNSCORED_SHARE = 0.1  # the real MBXP part also holds languages the evaluation skips

# Log-normal length models per part: (median tokens, sigma). Inputs: OpenOrca is short chat,
# GSM8K carries its few-shot examples (~900 tokens), MBXP a code prefix. Outputs are set so the
# whole set averages about 145 reference tokens, as the real one does (tokens_per_sample ~145).
INPUT_LENGTHS = {"OpenOrca": (180.0, 0.8), "GSM8K": (900.0, 0.12), "MBXP": (220.0, 0.5)}
OUTPUT_LENGTHS = {"OpenOrca": (130.0, 0.8), "GSM8K": (134.0, 0.35), "MBXP": (102.0, 0.5)}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="pickle file to write")
    parser.add_argument("--rows", type=int, default=15000, help="total rows, split equally between the 3 parts")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")


def validate_args(args: argparse.Namespace) -> None:
    if args.rows < len(PARTS):
        raise SystemExit(f"--rows must be at least {len(PARTS)} (one per dataset part), got {args.rows}")
    if not args.output.parent.is_dir():
        raise SystemExit(f"--output {args.output}: folder {args.output.parent} does not exist")


def part_sizes(rows: int) -> dict[str, int]:
    """Equal split; the first parts take the remainder."""
    base, extra = divmod(rows, len(PARTS))
    return {part: base + (k < extra) for k, part in enumerate(PARTS)}


def _lengths(rng: np.random.Generator, model: tuple[float, float], count: int, low: int, high: int) -> np.ndarray:
    median, sigma = model
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, count)), low, high).astype(np.int64)


def _random_ids(rng: np.random.Generator, count: int) -> list[int]:
    return rng.integers(FIRST_RANDOM_ID, VOCAB_SIZE, count).tolist()


def _sample_id(rng: np.random.Generator, part: str, index: int) -> str:
    if part == "GSM8K":
        return f"train.{index}"
    if part == "MBXP":
        languages = UNSCORED_LANGUAGES if rng.random() < UNSCORED_SHARE else SCORED_LANGUAGES
        return f"{rng.choice(languages)}_f{index}"
    return f"synth.{index}"


def _part_rows(rng: np.random.Generator, part: str, count: int) -> list[dict[str, Any]]:
    is_mbxp = part == "MBXP"
    stop_ids = list(MBXP_STOP_IDS) if is_mbxp else [EOS_ID]
    input_lengths = _lengths(rng, INPUT_LENGTHS[part], count, len(PROMPT_PREFIX) + 1, MAX_PROMPT_TOKENS)
    # MBXP references end with the stop sequence, so they are at least that long.
    output_lengths = _lengths(rng, OUTPUT_LENGTHS[part], count, len(stop_ids) + 1, MAX_NEW_TOKENS)
    rows = []
    for index, (n_in, n_out) in enumerate(zip(input_lengths, output_lengths, strict=True)):
        tok_input = list(PROMPT_PREFIX) + _random_ids(rng, int(n_in) - len(PROMPT_PREFIX))
        tok_ref = _random_ids(rng, int(n_out) - len(stop_ids)) + list(MBXP_STOP_IDS) if is_mbxp \
            else _random_ids(rng, int(n_out))
        question = f"synthetic {part} question {index}"
        answer = str(index) if part == "GSM8K" else f"synthetic {part} answer {index}"
        rows.append({
            "dataset": part,
            "id": _sample_id(rng, part, index),
            "question": question,
            "input": f"<s> [INST] {question} [/INST]",
            "ref_output": f"synthetic {part} answer {index}",
            "gt_output": f"assert f{index}() is not None" if is_mbxp else answer,
            "tok_input": tok_input,
            "tok_ref_output": tok_ref,
            "stop_sequence": "\n```\n" if is_mbxp else "</s>",
            "tok_stop_sequence": stop_ids,
            "tok_input_len": len(tok_input),
            "tok_ref_output_len": len(tok_ref),
        })
    return rows


def synth_frame(rows: int, seed: int) -> pd.DataFrame:
    """The synthetic dataset, with the real pickle's dtypes: object columns for text and token
    lists, int64 lengths."""
    rng = np.random.default_rng(seed)
    records = [r for part, count in part_sizes(rows).items() for r in _part_rows(rng, part, count)]
    frame = pd.DataFrame({col: pd.Series([r[col] for r in records], dtype=object) for col in DATASET_COLUMNS})
    for col in ("tok_input_len", "tok_ref_output_len"):
        frame[col] = frame[col].astype("int64")
    return frame


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": len(frame),
        "rows_per_part": {k: int(v) for k, v in frame["dataset"].value_counts().sort_index().items()},
        "mean_input_tokens": round(float(frame["tok_input_len"].mean()), 1),
        "max_input_tokens": int(frame["tok_input_len"].max()),
        "mean_ref_output_tokens": round(float(frame["tok_ref_output_len"].mean()), 1),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    frame = synth_frame(args.rows, args.seed)
    frame.to_pickle(args.output)
    logger.info("wrote %s", args.output)
    return {"output": str(args.output), "seed": args.seed, **summarize(frame)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(cli)
    print(json.dumps(main(cli.parse_args()), indent=2, sort_keys=True))
