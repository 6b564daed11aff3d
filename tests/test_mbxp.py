"""Our checker against the reference checker's verdicts on 218 labelled answers (tests/data/mbxp)."""

import json
from pathlib import Path

from harness.evaluation.mbxp import SCORED_LANGUAGES, MbxpTask, missing_toolchains, run_mbxp

CASES = Path(__file__).parent / "data" / "mbxp" / "cases.jsonl"


def test_every_labelled_case_reaches_the_reference_verdict():
    missing = missing_toolchains(SCORED_LANGUAGES)
    assert not missing, "\n".join(missing)
    rows = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]
    tasks = [MbxpTask(f"{i:03d}", row["lang"], row["entry_point"], row["response"], row["test_code"])
             for i, row in enumerate(rows)]

    verdicts = run_mbxp(tasks, n_workers=2, progress=False)

    assert [verdict.key for verdict in verdicts] == [task.key for task in tasks]
    mismatches = [f"{row['id']} ({row['kind']}): expected passed={row['expected_passed']}, got {verdict.result[:300]!r}"
                  for row, verdict in zip(rows, verdicts, strict=True) if verdict.passed != row["expected_passed"]]
    assert not mismatches, f"{len(mismatches)} of {len(rows)} verdicts differ:\n" + "\n".join(mismatches)
