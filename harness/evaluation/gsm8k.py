"""GSM8K scoring as the reference does it: answer extraction, then exact numeric comparison."""

from __future__ import annotations

import re
from collections.abc import Sequence

ANSWER_DELIMITER = "The answer is"
CONTINUATION = "\nQ:"  # the model starting a new few-shot question: its answer is over
# Optional minus, digits with thousands commas, optional decimal part; ".5" matches too.
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_answer(text: str) -> str | None:
    """The number the model answered, commas removed; None when the text has no number.

    The text is first cut at the first "\\nQ:". Then the first number after the LAST
    "The answer is" wins; when there is no delimiter, or no number after it, the last number
    of the text is the fallback."""
    text = text.split(CONTINUATION, 1)[0]
    if ANSWER_DELIMITER in text:
        after = NUMBER.findall(text.rsplit(ANSWER_DELIMITER, 1)[1])
        if after:
            return after[0].replace(",", "")
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_number(text: str) -> bool:
    return _as_float(text) is not None


def is_correct(answer: str | None, ground_truth: str) -> bool:
    """Float equality of the extracted answer and the ground truth; no answer is wrong. The ground
    truth is parsed as it stands, commas NOT removed: the reference did not, so a "1,080" ground
    truth can never be matched (the dataset's gt_output carries no commas)."""
    predicted = _as_float(answer)
    expected = _as_float(str(ground_truth))
    return predicted is not None and expected is not None and predicted == expected


def gsm8k_accuracy(answers: Sequence[str | None], ground_truths: Sequence[str]) -> float | None:
    """100 * correct / count, not rounded (as the reference reports it); None for no items."""
    if len(answers) != len(ground_truths):
        raise ValueError(f"{len(answers)} answers but {len(ground_truths)} ground truths")
    if not answers:
        return None
    correct = sum(is_correct(a, g) for a, g in zip(answers, ground_truths, strict=True))
    return 100.0 * correct / len(answers)
