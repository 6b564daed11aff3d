"""Merge a run's journal (run_outputs/q<indices>.pkl) into the dataset, one output per row.

Each journal file holds {"query_ids": [qsl indices], "outputs": [token ids per index]}; ids may
be lists or numpy arrays (the reference wrote arrays).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import sentencepiece as spm
from tqdm import tqdm

from harness.evaluation.rouge import rouge_pair
from harness.evaluation.sentences import rouge_ready
from harness.journal import JournalError, read_batch_file
from harness.tokenizer import EOS_ID, reference_decode

CONSOLIDATED_ROUGE = ("rouge1", "rouge2", "rougeL")


class ConsolidationError(ValueError):
    """Journal files that do not give every dataset row exactly one output; one line."""


def _describe(indices: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"{shown}, ... ({len(indices)} in all)" if len(indices) > limit else shown


def read_run_outputs(folder: str | Path) -> list[tuple[str, dict[int, list[int]]]]:
    """(file name, qsl index -> output ids) of every q*.pkl in folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConsolidationError(f"{folder}: run outputs folder not found (pass --run-outputs)")
    files = sorted(folder.glob("q*.pkl"))
    if not files:
        raise ConsolidationError(f"{folder}: no q*.pkl journal files; was the run made with --accuracy?")
    try:
        return [(path.name, read_batch_file(path)) for path in files]
    except JournalError as exc:
        raise ConsolidationError(str(exc)) from None


def collect_outputs(batches: Iterable[tuple[str, Mapping[int, list[int]]]], n_rows: int) -> dict[int, list[int]]:
    """qsl index -> output ids over all journal files; every row of the dataset exactly once."""
    outputs: dict[int, list[int]] = {}
    seen_in: dict[int, str] = {}
    duplicated: list[str] = []
    for name, batch in batches:
        for qsl_idx, ids in batch.items():
            if not 0 <= qsl_idx < n_rows:
                raise ConsolidationError(f"{name}: qsl index {qsl_idx} is outside the dataset of {n_rows} rows")
            if qsl_idx in outputs:
                duplicated.append(f"{qsl_idx} ({seen_in[qsl_idx]} and {name})")
                continue
            outputs[qsl_idx] = ids
            seen_in[qsl_idx] = name
    if duplicated:
        raise ConsolidationError(f"rows with more than one output: {_describe(duplicated)}")
    missing = [i for i in range(n_rows) if i not in outputs]
    if missing:
        raise ConsolidationError(f"rows without an output: {_describe(missing)}")
    return outputs


def strip_trailing_eos(ids: Sequence[int]) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] == EOS_ID:
        end -= 1
    return [int(i) for i in ids[:end]]


def consolidate(frame: pd.DataFrame, outputs: dict[int, list[int]], sp: spm.SentencePieceProcessor,
                progress: bool = True) -> pd.DataFrame:
    """The dataset plus gen_output_tok_id, gen_output_text, gen_output_tok_len and each row's
    rouge1/rouge2/rougeL F-measure (0..1, not x100, as the reference's consolidation kept them)
    against gt_output (the target the evaluator scores against), both sides stripped and
    sentence-joined as in the evaluator."""
    merged = frame.copy()
    tok_ids = [strip_trailing_eos(outputs[i]) for i in range(len(frame))]
    texts = [reference_decode(sp, ids) for ids in tok_ids]
    scores = [rouge_pair(rouge_ready(text), rouge_ready(str(ref)))
              for text, ref in tqdm(zip(texts, frame["gt_output"], strict=True), total=len(texts),
                                    desc="ROUGE per row", unit="row", disable=not progress)]
    merged["gen_output_tok_id"] = tok_ids
    merged["gen_output_text"] = texts
    merged["gen_output_tok_len"] = [len(ids) for ids in tok_ids]
    for name in CONSOLIDATED_ROUGE:
        merged[name] = [s[name] for s in scores]
    return merged
