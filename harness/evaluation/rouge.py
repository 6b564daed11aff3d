"""ROUGE as the reference computes it (HF evaluate's "rouge" metric, which wraps rouge_score).

Per pair: RougeScorer(ROUGE_TYPES, use_stemmer=True).score(target, prediction), F-measure kept.
Summary: mean over pairs x 100, rounded to 4 places. Inputs are expected already stripped and
sentence-joined (sentences.rouge_ready) for both sides, as the reference does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@functools.lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_pair(prediction: str, target: str) -> dict[str, float]:
    """F-measure of each ROUGE type for one pair. The order of score()'s arguments matters
    (rougeLsum is not symmetric): the target goes first, as in the reference."""
    scores = _scorer().score(target, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def rouge_pairs(predictions: Sequence[str], targets: Sequence[str]) -> list[dict[str, float]]:
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    return [rouge_pair(p, t) for p, t in zip(predictions, targets, strict=True)]


def rouge_summary(per_pair: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean F-measure x 100 rounded to 4 places, per ROUGE type; {} when there are no pairs.

    numpy's mean (pairwise summation) and numpy's float64 rounding, not Python's sum and round,
    because those are what the reference's round(np.mean(v) * 100, 4) ran; they can differ in
    the last printed digit."""
    if not per_pair:
        return {}
    return {
        name: float(round(np.mean(np.array([s[name] for s in per_pair], dtype=np.float64)) * 100, 4))
        for name in ROUGE_TYPES
    }
