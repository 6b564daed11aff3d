"""Reading what loadgen wrote: the detail log's MLLOG records and the key figures of a run."""

from __future__ import annotations

import json
from pathlib import Path

MLLOG_PREFIX = ":::MLLOG "

KEY_FIGURES = (
    ("result_validity", "Result"),
    ("result_samples_per_second", "Samples/s"),
    ("result_tokens_per_second", "Tokens/s"),
    ("result_completed_tokens_per_second", "Completed tokens/s"),
    ("result_first_token_99.00_percentile_latency_ns", "TTFT p99 (ns)"),
    ("result_time_per_output_token_99.00_percentile_ns", "TPOT p99 (ns)"),
    ("num_errors", "Errors"),
    ("num_warnings", "Warnings"),
)


def read_detail_log(path: str | Path) -> dict[str, object]:
    """key -> value of every MLLOG record (the last one wins), plus "errors": their messages."""
    values: dict[str, object] = {}
    errors: list[str] = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.startswith(MLLOG_PREFIX):
            continue
        try:
            record = json.loads(line[len(MLLOG_PREFIX):])
        except json.JSONDecodeError:
            continue
        values[record.get("key", "")] = record.get("value")
        if record.get("metadata", {}).get("is_error"):
            errors.append(str(record.get("value")))
    values["errors"] = errors
    return values


def key_figures(detail: dict[str, object]) -> list[tuple[str, object]]:
    """The figures people compare, in a fixed order, for the ones this run logged."""
    return [(label, detail[key]) for key, label in KEY_FIGURES if key in detail]
