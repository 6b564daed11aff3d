"""GSM8K answer extraction and scoring, as the reference does them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.evaluation.gsm8k import extract_answer, gsm8k_accuracy, is_correct, is_number

pytestmark = pytest.mark.quick

DATA = Path(__file__).parent / "data" / "gsm8k" / "train_items.jsonl"


@pytest.mark.parametrize(("text", "expected"), [
    ("5 + 7 = 12. The answer is 12.", "12"),
    ("They pay 1,000 + 80 = 1,080 dollars. The answer is 1,080.", "1080"),
    ("The temperature drops to -7 degrees. The answer is -7.", "-7"),
    ("Half of 5 is 2.5. The answer is 2.5.", "2.5"),
    ("Each costs .5 dollars", ".5"),
    ("The answer is 3. Wait, 4 more. The answer is 9 apples, not 10.", "9"),
    ("12 * 3 = 36. The answer is 36.\nQ: Tom has 5 apples. A: The answer is 5.", "36"),
    ("She has 4 cats and 6 dogs, so 10 pets", "10"),
    ("The answer is unknown, maybe 8 or 11", "8"),
    ("The answer is unknown", None),
    ("I cannot solve this.", None),
    ("", None),
    ("It is 3.\nQ: what is 5?", "3"),
    ("\nQ: 5 apples", None),
])
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_delimiter_without_number_falls_back_to_last_number_of_the_text() -> None:
    # Nothing numeric after the last delimiter: the last number anywhere (before the cut) counts.
    assert extract_answer("The answer is 5. Then 6 more. The answer is above") == "6"


@pytest.mark.parametrize(("answer", "truth", "expected"), [
    ("1080", "1080", True), ("1080.0", "1080", True), ("-7", "-7", True), ("7", "-7", False),
    ("2.5", "2.5", True), (None, "3", False), ("3", "1,003", False), ("1003", "1,003", False),
])
def test_is_correct(answer: str | None, truth: str, expected: bool) -> None:
    assert is_correct(answer, truth) is expected


def test_is_number() -> None:
    assert is_number("-12") and is_number("2.5") and not is_number("1,080") and not is_number("")


def test_accuracy_is_100_times_correct_over_count_unrounded() -> None:
    assert gsm8k_accuracy(["1", "2", None], ["1", "3", "4"]) == 100.0 / 3
    assert gsm8k_accuracy([], []) is None
    with pytest.raises(ValueError):
        gsm8k_accuracy(["1"], [])


def _items() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


def _as_model_answer(item: dict) -> str:
    """The solution written the way the few-shot prompt asks for ("... The answer is N.")."""
    steps = item["answer"].split("####")[0].strip()
    final = item["answer"].split("####")[1].strip()
    return f"{steps}\nThe answer is {final}."


def test_real_items_scored_from_their_reference_solutions() -> None:
    items = _items()
    assert {i["id"] for i in items} >= {"train.548"}
    answers = [extract_answer(_as_model_answer(i)) for i in items]
    assert answers == [i["final_answer"] for i in items]
    assert gsm8k_accuracy(answers, [i["final_answer"] for i in items]) == 100.0


def test_real_items_with_comma_answers_and_a_wrong_and_a_missing_answer() -> None:
    items = _items()
    with_commas = [i for i in items if "," in i["answer"].split("####")[1]]
    assert with_commas, "the sample keeps problems whose answers carry commas"
    answers = [extract_answer(_as_model_answer(i)) for i in with_commas]
    assert all("," not in a for a in answers)
    truths = [i["final_answer"] for i in items[:4]]
    wrong = str(int(truths[1]) + 1)
    answers = [truths[0], wrong, None, truths[3]]
    assert gsm8k_accuracy(answers, truths) == 50.0
