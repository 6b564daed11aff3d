"""ROUGE and sentence splitting equal the reference's (rouge_score + nltk English punkt)."""

from __future__ import annotations

import random

import nltk
import numpy as np
import pytest
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from punkt.data import english
from rouge_score import rouge_scorer

from harness.evaluation.rouge import ROUGE_TYPES, rouge_pair, rouge_pairs, rouge_summary
from harness.evaluation.sentences import install_punkt_tab, punkt_tab_files, rouge_ready, split_sentences

pytestmark = pytest.mark.quick

WORDS = (
    "the", "cat", "sat", "on", "mat", "dog", "ran", "quickly", "slowly", "over", "under", "bridge", "river",
    "city", "people", "were", "running", "jumped", "apples", "pears", "market", "sells", "sold", "buying",
    "bought", "U.S.", "Dr.", "e.g.", "Mr.", "a.m.", "report", "reports", "reported"
)


@pytest.fixture(scope="module", autouse=True)
def punkt_tables(tmp_path_factory: pytest.TempPathFactory):
    return install_punkt_tab(tmp_path_factory.mktemp("nltk_data"))


def _random_text(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 5)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", "."]))
    return rng.choice(["", " ", "  \n"]) + " ".join(sentences) + rng.choice(["", " ", "\n"])


def _seeded_pairs(n: int, seed: int = 1234) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(rouge_ready(_random_text(rng)), rouge_ready(_random_text(rng))) for _ in range(n)]


def test_rouge_pair_equals_rouge_score_called_the_reference_way() -> None:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for prediction, target in _seeded_pairs(300):
        expected = scorer.score(target, prediction)
        assert rouge_pair(prediction, target) == {name: expected[name].fmeasure for name in ROUGE_TYPES}


def test_argument_order_matters_for_rougelsum() -> None:
    # The summary-level LCS unions target sentences' matches: not symmetric.
    prediction = "a b c d e.\nc d e a b."
    target = "a b c d e c d e a b."
    ours = rouge_pair(prediction, target)["rougeLsum"]
    assert ours == 0.7
    assert rouge_pair(target, prediction)["rougeLsum"] == 1.0
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    assert ours == scorer.score(target, prediction)["rougeLsum"].fmeasure


def test_summary_is_numpy_mean_times_100_rounded_4() -> None:
    pairs = _seeded_pairs(200, seed=99)
    per_pair = rouge_pairs([p for p, _ in pairs], [t for _, t in pairs])
    summary = rouge_summary(per_pair)
    assert list(summary) == list(ROUGE_TYPES)
    for name in ROUGE_TYPES:
        assert summary[name] == float(round(np.mean([s[name] for s in per_pair]) * 100, 4))
        assert isinstance(summary[name], float)


def test_summary_literal_values() -> None:
    per_pair = [rouge_pair("the cat sat on the mat", "the cat sat on the mat"),
                rouge_pair("a dog", "the cat sat on the mat")]
    assert rouge_summary(per_pair) == {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0, "rougeLsum": 50.0}
    assert rouge_summary([]) == {}


def test_stemmer_is_used() -> None:
    assert rouge_pair("reports running", "reported runs")["rouge1"] == 1.0


def test_rouge_pairs_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        rouge_pairs(["a", "b"], ["a"])


SPLITS = [
    ("Dr. Smith arrived at 9 a.m. on Monday. He met Mr. Brown of the U.S. Army. They left at noon.",
     ["Dr. Smith arrived at 9 a.m. on Monday.", "He met Mr. Brown of the U.S. Army.", "They left at noon."]),
    ("Bring fruit, e.g. apples and pears. Mrs. Jones said so! Did she? Yes.",
     ["Bring fruit, e.g.", "apples and pears.", "Mrs. Jones said so!", "Did she?", "Yes."]),
    ("The U.S. economy grew 3.5% in Q2. Analysts, i.e. most of them, were surprised.",
     ["The U.S. economy grew 3.5% in Q2.", "Analysts, i.e.", "most of them, were surprised."]),
    ("He paid $4.50 for it. Then he left... Nobody knew why.",
     ["He paid $4.50 for it.", "Then he left... Nobody knew why."]),
    ('Prof. Adams wrote "Stop." Then she left. St. Louis is in Mo. too.',
     ['Prof. Adams wrote "Stop."', "Then she left.", "St. Louis is in Mo.", "too."]),
    ("No full stop at the end", ["No full stop at the end"]),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_sentence_splits_literal(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_sentence_splits_equal_punkt_built_from_the_package_tables(text: str, expected: list[str]) -> None:
    # The tables as nltk's PunktParameters, straight from the package: checks our punkt_tab files.
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    for word, flags in english.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    assert PunktSentenceTokenizer(params).tokenize(text) == expected == nltk.sent_tokenize(text)


def test_punkt_tab_files_hold_the_english_tables(punkt_tables) -> None:
    model_dir = punkt_tables / "tokenizers" / "punkt_tab" / "english"
    counts = {name: (model_dir / name).read_text(encoding="utf-8").count("\n") for name in punkt_tab_files()}
    assert counts == {"abbrev_types.txt": 156, "collocations.tab": 37, "sent_starters.txt": 39,
                      "ortho_context.tab": 20366}
    assert "u.s\n" in (model_dir / "abbrev_types.txt").read_text(encoding="utf-8")


def test_rouge_ready_strips_and_joins_with_newlines() -> None:
    assert rouge_ready("  Leading spaces.   Two sentences here.  \n") == "Leading spaces.\nTwo sentences here."
