"""Generation statistics the reference reports beside the accuracy figures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def generation_stats(openorca_predictions: Sequence[str], output_ids: Iterable[Sequence[int]],
                     entry_count: int) -> dict[str, int | float]:
    """gen_len: characters of the OpenOrca predictions as scored (stripped, sentences joined by
    newlines); gen_num: log entries, repeats included; gen_tok_len: tokens of the unique samples;
    tokens_per_sample: gen_tok_len / gen_num rounded to 1 place (so repeats lower it, as in the
    reference)."""
    gen_tok_len = sum(len(ids) for ids in output_ids)
    return {
        "gen_len": sum(len(p) for p in openorca_predictions),
        "gen_num": entry_count,
        "gen_tok_len": gen_tok_len,
        "tokens_per_sample": round(gen_tok_len / entry_count, 1) if entry_count else 0.0,
    }
