"""The three checks of compliance TEST06 over accuracy-log entries (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from harness.evaluation.accuracy_log import decode_entry_data
from harness.tokenizer import EOS_ID


def decode_ids(hex_data: str) -> np.ndarray:
    """The harness writes int32 ids."""
    return decode_entry_data(hex_data, "int32")


def eos_check(entries: Iterable[Mapping]) -> bool:
    """No answer ends with more than one EOS id."""
    for entry in entries:
        ids = decode_ids(entry["data"])
        if len(ids) >= 2 and ids[-1] == EOS_ID and ids[-2] == EOS_ID:
            return False
    return True


def first_token_check(entries: Iterable[Mapping]) -> bool:
    """Every reported first token equals the start of its answer."""
    for entry in entries:
        first, ids = decode_ids(entry.get("token_data", "")), decode_ids(entry["data"])
        if len(first) == 0 or len(ids) < len(first) or not np.array_equal(ids[:len(first)], first):
            return False
    return True


def sample_length_check(entries: Iterable[Mapping]) -> bool:
    """Every token_count equals the number of ids in the answer."""
    return all(int(entry["token_count"]) == len(decode_ids(entry["data"])) for entry in entries)


def verification_lines(entries: list[Mapping], scenario: str) -> tuple[list[str], bool]:
    """The verifier's report lines and whether TEST06 passed."""
    first = "Skipped" if scenario == "Offline" else first_token_check(entries)
    eos, length = eos_check(entries), sample_length_check(entries)
    passed = first in (True, "Skipped") and eos and length and bool(entries)
    lines = [
        f"First token check pass: {first}",
        f"EOS check pass: {eos}",
        f"Sample length check pass: {length}",
        "TEST06 verification complete" if passed else "TEST06 verification failed",
    ]
    return lines, passed
