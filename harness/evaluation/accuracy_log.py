"""Read loadgen's mlperf_log_accuracy.json into token ids per sample, as the reference does.

Each entry: {"seq_id", "qsl_idx", "data" (hex of the response bytes), "token_count"}. The first
entry of a qsl_idx counts; repeats are skipped but still counted (gen_num counts every entry).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# The reference's --dtype choices; "float" is numpy's float32. The harness writes int32.
DTYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32}
DEFAULT_DTYPE = "int32"


class AccuracyLogError(ValueError):
    """An accuracy log that cannot be scored; the message is one line naming the file."""


@dataclass(frozen=True)
class AccuracyLog:
    outputs: dict[int, list[int]] = field(default_factory=dict)  # qsl_idx -> ids, log order
    entry_count: int = 0  # every entry, repeats included

    @property
    def duplicate_count(self) -> int:
        return self.entry_count - len(self.outputs)


def _dtype_hint(n_values: int, token_count: int, dtype: str) -> str:
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    for name, other in DTYPES.items():
        if name != dtype and n_values * itemsize == token_count * np.dtype(other).itemsize:
            return f"; the log looks written as {name}: use --dtype {name}"
    return ""


def decode_entry_data(hex_data: str, dtype: str) -> np.ndarray:
    """The values held in one entry's hex data, read as dtype (native byte order, as np.frombuffer)."""
    raw = bytes.fromhex(hex_data)
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if len(raw) % itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype} values "
                         f"({itemsize} bytes each): use the --dtype the log was written with")
    return np.frombuffer(raw, DTYPES[dtype])


def _token_ids(values: np.ndarray, dtype: str, vocab_size: int | None) -> list[int]:
    if dtype == "float" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise ValueError("holds non-integral values read as float: use --dtype int32 (or int64)")
    ids = [int(v) for v in values]
    if vocab_size is not None and ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if i < 0 or i >= vocab_size)
        raise ValueError(f"token id {bad} outside the vocabulary [0, {vocab_size}): "
                         f"was the log written with another --dtype than {dtype}?")
    return ids


def parse_accuracy_entries(
    entries: object, dtype: str = DEFAULT_DTYPE, dataset_size: int | None = None,
    vocab_size: int | None = None, source: str = "accuracy log",
) -> AccuracyLog:
    """Token ids per qsl_idx from the decoded JSON of an accuracy log. Every problem raises
    AccuracyLogError naming source, the entry, and the fix."""
    if dtype not in DTYPES:
        raise AccuracyLogError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not isinstance(entries, list):
        raise AccuracyLogError(f"{source}: expected a JSON list of entries, found {type(entries).__name__}")
    outputs: dict[int, list[int]] = {}
    for n, entry in enumerate(entries):
        where = f"{source}: entry {n}"
        if not isinstance(entry, dict):
            raise AccuracyLogError(f"{where} is not a JSON object")
        missing = [key for key in ("qsl_idx", "data") if key not in entry]
        if missing:
            raise AccuracyLogError(f"{where} lacks key(s) {', '.join(missing)}")
        qsl_idx, data = entry["qsl_idx"], entry["data"]
        if not isinstance(qsl_idx, int) or isinstance(qsl_idx, bool):
            raise AccuracyLogError(f"{where}: qsl_idx {qsl_idx!r} is not an integer")
        if qsl_idx < 0 or (dataset_size is not None and qsl_idx >= dataset_size):
            raise AccuracyLogError(f"{where}: qsl_idx {qsl_idx} is outside the dataset of {dataset_size} rows: "
                                   "is --dataset-file the dataset this log was produced with?")
        if qsl_idx in outputs:
            continue
        if not isinstance(data, str):
            raise AccuracyLogError(f"{where} (qsl_idx {qsl_idx}): data is not a hex string")
        try:
            values = decode_entry_data(data, dtype)
            token_count = entry.get("token_count")
            if isinstance(token_count, int) and token_count != len(values):
                # The reference never reads token_count, so a mismatch alone is scored as it stands;
                # only a length that fits another --dtype exactly is a wrong flag, not a quirk.
                hint = _dtype_hint(len(values), token_count, dtype)
                if hint:
                    raise ValueError(f"holds {len(values)} {dtype} values but token_count is {token_count}{hint}")
                log.warning("%s (qsl_idx %d): token_count %d but %d ids; scoring the ids", where, qsl_idx,
                            token_count, len(values))
            outputs[qsl_idx] = _token_ids(values, dtype, vocab_size)
        except ValueError as exc:
            raise AccuracyLogError(f"{where} (qsl_idx {qsl_idx}): {exc}") from None
    return AccuracyLog(outputs=outputs, entry_count=len(entries))


def read_accuracy_log(
    path: str | Path, dtype: str = DEFAULT_DTYPE, dataset_size: int | None = None, vocab_size: int | None = None,
) -> AccuracyLog:
    """parse_accuracy_entries on the file at path; unreadable or malformed JSON is an AccuracyLogError."""
    path = Path(path)
    if not path.is_file():
        raise AccuracyLogError(f"{path}: accuracy log not found (pass --mlperf-accuracy-file)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AccuracyLogError(f"{path}: not a text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise AccuracyLogError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
                               "was the run interrupted?") from None
    return parse_accuracy_entries(entries, dtype, dataset_size, vocab_size, source=str(path))


def encode_entry_data(ids: Sequence[int], dtype: str = DEFAULT_DTYPE) -> str:
    """Hex data of ids as loadgen logs a response of that dtype (uppercase, as loadgen writes)."""
    return np.asarray(ids, dtype=DTYPES[dtype]).tobytes().hex().upper()
