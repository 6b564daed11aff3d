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
    end = find_stop_end(ids, stop_ids)
    return list(ids if end is None else ids[:end])


def postprocess_output(ids: Sequence[int], stop_ids: Sequence[int] = ()) -> list[int]:
    """The reference's order: trailing EOS/<unk> first, then (MBXP rows) the stop-sequence cut."""
    return cut_after_stop(strip_trailing(ids), stop_ids)


def find_stop_end(ids: Sequence[int], stop_ids: Sequence[int], start: int = 0) -> int | None:
    """Length of ids up to and including the first occurrence of stop_ids that ends at or after
    position `start` (the first new id), or None. Checking from `start` keeps the cost per step
    proportional to the new ids, and still finds a stop that straddles earlier ids."""
    n = len(stop_ids)
    if not n:
        return None
    target = list(stop_ids)
    for end in range(max(start + 1, n), len(ids) + 1):
        if list(ids[end - n:end]) == target:
            return end
    return None
