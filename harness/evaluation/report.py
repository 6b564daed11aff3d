"""The evaluator's outputs: the reference's results line, tables, results.json, accuracy.txt.

Everything printed is rendered from the same dict that goes to results.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

# The reference's key order; a part absent from the log leaves its keys out.
RESULT_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "gsm8k", "mbxp",
               "gen_len", "gen_num", "gen_tok_len", "tokens_per_sample")


def ordered_results(figures: Mapping[str, float | int | None]) -> dict[str, float | int]:
    """The figures in the reference's order, absent (missing or None) ones left out."""
    return {key: figures[key] for key in RESULT_KEYS if figures.get(key) is not None}


def results_line(figures: Mapping[str, float | int | None]) -> str:
    """The reference's printed dict, e.g. {'rouge1': 45.2287, ..., 'tokens_per_sample': 143.7};
    the submission checker parses `'rouge1': N` etc. from it."""
    return repr(ordered_results(figures))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def accuracy_txt(figures: Mapping[str, float | int | None], log_sha256: str) -> str:
    """accuracy.txt of the submission layout: the results line and the accuracy log's hash."""
    return f"{results_line(figures)}\nhash={log_sha256}\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, tuple("-" * w for w in widths), *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def targets_table(checks: list[Mapping[str, object]]) -> str:
    rows = [(str(c["metric"]), "absent" if c["value"] is None else str(c["value"]), str(c["required"]),
             str(c["status"])) for c in checks]
    return _table(("metric", "value", "required", "status"), rows)


def mbxp_table(languages: Mapping[str, Mapping[str, object]]) -> str:
    """Per MBXP language: scored and passed counts and the pass rate, or why it was not scored."""
    rows = []
    for lang in sorted(languages):
        entry = languages[lang]
        status = str(entry["status"])
        if status == "scored":
            rows.append((lang, str(entry["scored"]), str(entry["passed"]), f"{entry['mbxp']:.2f}", status))
        else:
            rows.append((lang, str(entry["rows"]), "-", "-", status))
    return _table(("language", "rows", "passed", "mbxp", "status"), rows)


def write_json(path: str | Path, data: Mapping[str, object]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
