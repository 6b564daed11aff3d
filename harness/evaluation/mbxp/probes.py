"""Before scoring, a one-line program per language goes through the real checks, so that a broken
toolchain (g++ without the assembler `as` or the linker `ld`, node without lodash, a tsc that does not
emit, php, ruby, an interpreter the unprivileged user cannot run) is named instead of failing every
answer of its language."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from harness.evaluation.mbxp.programs import MbxpTask
from harness.evaluation.mbxp.runner import run_mbxp
from harness.evaluation.mbxp.sandbox import Supervisors
from harness.evaluation.mbxp.toolchains import missing_toolchains

# (response, test code) shaped like the dataset's, each passing on a working toolchain.
PROBES: dict[str, tuple[str, str]] = {
    "cpp": ("#include <bits/stdc++.h>\nusing namespace std;\nint one() { return 1; }\n",
            "int main() { if (one() != 1) throw runtime_error(\"wrong\"); }\n"),
    "python": ("def one():\n    return 1\n", "def check(candidate):\n    assert candidate() == 1\n"),
    "javascript": ("function one() { return 1; }\n",
                   "const _ = require(\"lodash\");\nif (!_.isEqual(one(), 1)) { throw \"wrong\"; }\n"),
    "typescript": ("function one(): number { return 1; }\n",
                   "import * as assert from 'assert'\nassert.deepEqual(one(), 1);\n"),
    "php": ("<?php\nfunction one() { return 1; }\n", "if (one() !== 1) { throw new Exception(\"wrong\"); }\n"),
    "ruby": ("def one\n  1\nend\n", "raise StandardError, \"wrong\" if one != 1\n"),
}


def _probe(lang: str, supervisors: Supervisors) -> str | None:
    try:
        [verdict] = run_mbxp([MbxpTask(lang, lang, "one", *PROBES[lang])], n_workers=1, progress=False,
                             supervisors=supervisors)
    except RuntimeError as error:  # the sandbox cannot start, or no interpreter can run python answers
        return str(error)
    output = " ".join(verdict.result.split()) or "no output"
    return None if verdict.passed else f"a one-line {lang} program does not pass: {output}"


def broken_toolchains(languages: Iterable[str]) -> dict[str, str]:
    """language -> one line saying what is missing or what its probe program printed, for each
    language whose toolchain cannot check answers; {} when all can."""
    wanted = sorted(set(languages))
    broken = {lang: "; ".join(problems) for lang in wanted if (problems := missing_toolchains([lang]))}
    present = [lang for lang in wanted if lang not in broken]
    supervisors = Supervisors()  # one for all probes: an interrupt here ends them all
    with ThreadPoolExecutor(max_workers=max(1, len(present))) as pool, supervisors.stopped_on_error():
        for lang, problem in zip(present, pool.map(_probe, present, [supervisors] * len(present)), strict=True):
            if problem:
                broken[lang] = problem
    return dict(sorted(broken.items()))
