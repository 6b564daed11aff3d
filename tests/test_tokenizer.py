from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from harness.demo import DemoAssets
from harness.tokenizer import bundled_tokenizer_model, load_sentencepiece, reference_decode, reference_encode

ALPHABET = [
    *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    *" \t\n.,;:!?'\"()[]{}<>=+-*/_#`$%&|\\@^~",
    "  ", "\n\n", "    ", "```", "def ", "return ", "...", "'s", "[INST]", " [/INST]",
    "é", "ß", "中文", "日本", "🙂", "Ω", "\u00a0",  # multi-byte and byte-fallback pieces
    "<s>", "</s>", "<unk>",  # literal special pieces
]


def random_texts(n: int, seed: int, specials: bool = True) -> list[str]:
    rng = random.Random(seed)
    alphabet = ALPHABET if specials else [a for a in ALPHABET if a not in ("<s>", "</s>", "<unk>")]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    if not specials:
        # a random "<" and "s>" can still meet: keep only texts without a special piece
        texts = [t for t in texts if not any(p in t for p in ("<s>", "</s>", "<unk>"))]
    return texts


@pytest.fixture(scope="module")
def sp():
    return load_sentencepiece(bundled_tokenizer_model())


@pytest.fixture(scope="module")
def hf_tokenizer(demo_assets: DemoAssets):
    return AutoTokenizer.from_pretrained(demo_assets.tokenizer_dir)


def test_autotokenizer_equals_reference_encode(hf_tokenizer, sp) -> None:
    texts = random_texts(3000, seed=1)
    mismatches = [t for t in texts if hf_tokenizer(t)["input_ids"] != reference_encode(sp, t)]
    assert mismatches == []


def test_autotokenizer_equals_sentencepiece_without_specials(hf_tokenizer, sp) -> None:
    texts = random_texts(3000, seed=2, specials=False)
    mismatches = [t for t in texts if hf_tokenizer(t)["input_ids"] != [1] + sp.encode(t)]
    assert mismatches == []


def test_reference_prompt_prefix(sp) -> None:
    assert reference_encode(sp, "<s> [INST] hi [/INST]")[:6] == [1, 1, 28705, 733, 16289, 28793]


@pytest.mark.parametrize(("text", "expected"), [
    ("hello world", "hello world"),
    ("  two leading spaces", " two leading spaces"),  # the first piece loses its "▁" only
    ("\n```\n", "\n```\n"),
    ("ünïcödé 🙂", "ünïcödé 🙂"),
])
def test_reference_decode_round_trip(sp, text: str, expected: str) -> None:
    assert reference_decode(sp, [1] + sp.encode(text) + [2]) == expected


def test_reference_decode_byte_pieces(sp) -> None:
    newline = sp.piece_to_id("<0x0A>")
    assert newline == 13
    assert reference_decode(sp, [newline, newline]) == "\n\n"
    # a lone UTF-8 lead byte is invalid: sentencepiece replaces it byte-wise with U+FFFD
    assert reference_decode(sp, [sp.piece_to_id("<0xC3>")]) == "\ufffd"
