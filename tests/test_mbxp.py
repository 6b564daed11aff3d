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


def test_python_answers_may_use_numpy_and_pandas_as_in_the_reference():
    # The reference checks python answers in processes forked from its evaluation process, which
    # has imported numpy and pandas: `import numpy` there finds the module loaded and the answer runs.
    check = "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    answers = {
        "numpy": "import numpy as np\ndef add(a, b):\n    return int(np.array([a, b]).sum())\n```\n",
        "pandas": "import pandas as pd\ndef add(a, b):\n    return int(pd.Series([a, b]).sum())\n```\n",
        "numpy-wrong": "import numpy as np\ndef add(a, b):\n    return int(np.array([a, b]).prod())\n```\n",
    }
    tasks = [MbxpTask(key, "python", "add", answer, check) for key, answer in answers.items()]

    verdicts = {verdict.key: verdict for verdict in run_mbxp(tasks, n_workers=2, progress=False)}

    assert verdicts["numpy"].result == "passed" and verdicts["pandas"].result == "passed"
    assert not verdicts["numpy-wrong"].passed and verdicts["numpy-wrong"].result.startswith("failed")
