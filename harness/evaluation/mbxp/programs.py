"""From an MBXP dataset row and a model response to the program the checker runs (pure functions).

The rules are the reference checker's: the prompt is not prepended (the model repeats it), the response
is cut at its first code fence, python responses are left-stripped, and the two characters "\\_" (as
Mixtral writes underscores) become "_". The program is the cleaned response followed by the test code.
"""

from __future__ import annotations

from dataclasses import dataclass

SCORED_LANGUAGES: tuple[str, ...] = ("cpp", "python", "php", "javascript", "ruby", "typescript")
FENCE = "```"


@dataclass(frozen=True)
class MbxpTask:
    """One answer to check. key: the caller's identifier, results are sorted by it."""

    key: str
    lang: str
    entry_point: str
    response: str
    test_code: str


@dataclass(frozen=True)
class MbxpVerdict:
    """One checked answer. result: "passed" / "failed: ..." / "timed out" for python, the program's
    (or compiler's) stderr or the timeout message for the other languages."""

    key: str
    lang: str
    passed: bool
    result: str


def parse_mbxp_id(row_id: str) -> tuple[str, str]:
    """"cpp_zipTuples" -> ("cpp", "zipTuples"); split at the first "_" (entry points contain "_")."""
    lang, sep, entry_point = row_id.partition("_")
    if not (sep and lang and entry_point):
        raise ValueError(f"MBXP id {row_id!r} is not of the form '<lang>_<entry_point>'")
    return lang, entry_point


def clean_response(response: str, lang: str) -> str:
    text = response.split(FENCE, 1)[0]
    if lang == "python":
        text = text.lstrip()
    return text.replace("\\_", "_")


def assemble_program(task: MbxpTask) -> str:
    code = clean_response(task.response, task.lang)
    if task.lang == "python":
        return f"{code}\n{task.test_code}\ncheck({task.entry_point})"
    return code + task.test_code
