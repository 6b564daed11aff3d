"""The official closed-division accuracy targets (v5.0 onwards) and the PASS/FAIL checks."""

from __future__ import annotations

from collections.abc import Mapping

# Reference figures of the full model; a submission must reach TARGET_FRACTION of each.
REFERENCE_FIGURES = {"rouge1": 45.5989, "rouge2": 23.3526, "rougeL": 30.4608, "gsm8k": 73.66, "mbxp": 60.16}
TARGET_FRACTION = 0.99
# tokens_per_sample must stay within 90 % of the lower and 110 % of the upper reference figure.
TOKENS_PER_SAMPLE_RANGE = (144.84 * 0.9, 145.9 * 1.1)

PASS, FAIL, ABSENT = "PASS", "FAIL", "absent"


def check_targets(results: Mapping[str, float | int]) -> list[dict[str, object]]:
    """One row per checked figure: metric, value (None when absent), required, status."""
    rows: list[dict[str, object]] = []
    for name, reference in REFERENCE_FIGURES.items():
        floor = reference * TARGET_FRACTION
        value = results.get(name)
        status = ABSENT if value is None else PASS if value >= floor else FAIL
        rows.append({"metric": name, "value": value, "required": f">= {floor:.4f}", "status": status})
    low, high = TOKENS_PER_SAMPLE_RANGE
    value = results.get("tokens_per_sample")
    status = ABSENT if value is None else PASS if low <= value <= high else FAIL
    rows.append({"metric": "tokens_per_sample", "value": value, "required": f"[{low:.2f}, {high:.2f}]",
                 "status": status})
    return rows

