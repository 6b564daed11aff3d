"""Post-processing of generated ids, exactly as the reference does it (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

TRAILING_IDS = frozenset((0, 2))  # <unk> and EOS: padding after an answer ends


def strip_trailing(ids: Sequence[int]) -> list[int]:
    """Drop every trailing id equal to EOS (2) or <unk> (0)."""
    end = len(ids)
    while end and ids[end - 1] in TRAILING_IDS:
        end -= 1
    return list(ids[:end])


def cut_after_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Keep everything up to and including the first occurrence of stop_ids."""
    n = len(stop_ids)
    if n:
        for start in range(len(ids) - n + 1):
            if list(ids[start:start + n]) == list(stop_ids):
                return list(ids[:start + n])
    return list(ids)


def postprocess_output(ids: Sequence[int], stop_ids: Sequence[int] = ()) -> list[int]:
    """The reference's order: trailing EOS/<unk> first, then (MBXP rows) the stop-sequence cut."""
    return cut_after_stop(strip_trailing(ids), stop_ids)
