"""The Mixtral tokenizer, built offline from its SentencePiece model.

Two jobs: build a HuggingFace fast tokenizer whose ids equal the reference tokenization, and
decode ids exactly as the reference's slow (sentencepiece) tokenizer did. transformers 5.x
rebuilds Llama tokenizers in a way that loses ids, so neither job may rely on AutoTokenizer
reading a checkpoint folder.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_PIECES = ("<unk>", "<s>", "</s>")
SPACE_PIECE = "\u2581"  # "▁", SentencePiece's visible space
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(p) for p in SPECIAL_PIECES) + ")")


def bundled_tokenizer_model() -> Path:
    """tokenizer.model of Mixtral-8x7B-Instruct-v0.1, as shipped by the mistral-common package."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mistral-common is installed without tokenizer.model.v1")
    return path


@functools.lru_cache(maxsize=4)
def load_sentencepiece(model_file: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(model_file))


def reference_encode(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Ids the reference's (legacy Llama) tokenizer gives: BOS, then each chunk between special
    pieces encoded by sentencepiece, special pieces written literally mapping to their ids."""
    ids = [BOS_ID]
    for chunk in _SPECIAL_SPLIT.split(text):
        if chunk in SPECIAL_PIECES:
            ids.append(SPECIAL_PIECES.index(chunk))
        elif chunk:
            ids.extend(sp.encode(chunk))
    return ids


def reference_decode(sp: spm.SentencePieceProcessor, ids: Iterable[int]) -> str:
    """Text the reference's slow tokenizer gives for decode(ids, skip_special_tokens=True).

    The slow tokenizer drops the leading "▁" of the first piece and decodes the pieces as
    sentencepiece does (byte pieces joined, invalid UTF-8 replaced byte-wise)."""
    pieces = [sp.id_to_piece(i) for i in ids if i not in (UNK_ID, BOS_ID, EOS_ID)]
    if pieces and pieces[0].startswith(SPACE_PIECE):
        pieces[0] = pieces[0][1:]
    return sp.decode_pieces(pieces)


def _bpe_merges(vocab: dict[str, int], scores: Sequence[float], mergeable: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's: every split of a piece into two known pieces,
    ranked by the merged piece's score, highest first (whitespace-only pieces score -1e9, so
    they merge last)."""
    merges = []
    for piece in sorted(mergeable, key=lambda p: (-scores[vocab[p]], vocab[p])):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        known = [(a, b) for a, b in splits if a in vocab and b in vocab]
        merges.extend(sorted(known, key=lambda ab: (vocab[ab[0]], vocab[ab[1]])))
    return merges


def build_fast_tokenizer(model_file: str | Path):
    """A transformers PreTrainedTokenizerFast equal to the reference (legacy Llama) tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    sp = load_sentencepiece(model_file)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    scores = [sp.get_score(i) for i in range(len(pieces))]
    mergeable = [p for i, p in enumerate(pieces) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]

    tok = Tokenizer(BPE(vocab=vocab, merges=_bpe_merges(vocab, scores, mergeable), unk_token="<unk>",
                        fuse_unk=True, byte_fallback=True))
    # Legacy Llama: a dummy "▁" before every chunk between special tokens, spaces made visible.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_PIECE), normalizers.Replace(" ", SPACE_PIECE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_PIECE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in SPECIAL_PIECES])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left", add_bos_token=True)


def save_tokenizer(model_file: str | Path, out_dir: str | Path) -> Path:
    """Write a folder that AutoTokenizer.from_pretrained loads offline (4.x and 5.x)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_fast_tokenizer(model_file).save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "tokenizer.model").write_bytes(Path(model_file).read_bytes())
    return out
