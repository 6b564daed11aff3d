"""From an accuracy log and the dataset to the reference's figures, part by part.

Parts absent from the log are left out of the figures (the reference crashed on them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import pandas as pd
import sentencepiece as spm
from tqdm import tqdm

from harness.evaluation.accuracy_log import AccuracyLog
from harness.evaluation.gsm8k import extract_answer, gsm8k_accuracy, is_number
from harness.evaluation.mbxp import SCORED_LANGUAGES, MbxpTask, MbxpVerdict, parse_mbxp_id, run_mbxp
from harness.evaluation.metrics import generation_stats
from harness.evaluation.rouge import rouge_pair, rouge_summary
from harness.evaluation.sentences import rouge_ready
from harness.tokenizer import reference_decode

log = logging.getLogger(__name__)

PARTS = ("OpenOrca", "GSM8K", "MBXP")
SKIPPED, UNSCORED, SCORED = "skipped (--skip-languages)", "not scored by the reference", "scored"

MbxpRunner = Callable[[list[MbxpTask], int, bool], list[MbxpVerdict]]  # tasks, n_workers, progress


@dataclass
class Evaluation:
    figures: dict[str, float | int] = field(default_factory=dict)  # the reference's keys, absent left out
    rows: dict[str, int] = field(default_factory=dict)  # unique samples per part
    mbxp_languages: dict[str, dict[str, object]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def samples_by_part(frame: pd.DataFrame, log_: AccuracyLog) -> dict[str, list[int]]:
    """qsl indices of the log's unique samples per dataset part, in log order (the order the
    reference averaged in, which fixes the last bits of the ROUGE means)."""
    names = frame["dataset"].tolist()
    parts: dict[str, list[int]] = {part: [] for part in PARTS}
    for qsl_idx in log_.outputs:
        parts.setdefault(str(names[qsl_idx]), []).append(qsl_idx)
    return parts


def mbxp_languages_to_run(frame: pd.DataFrame, indices: Sequence[int], skip: Collection[str]) -> list[str]:
    """Scored MBXP languages present among indices and not skipped: the toolchains needed."""
    langs = {parse_mbxp_id(str(frame.at[i, "id"]))[0] for i in indices}
    return sorted(langs & set(SCORED_LANGUAGES) - set(skip))


def score_openorca(frame: pd.DataFrame, indices: Sequence[int], texts: dict[int, str],
                   progress: bool) -> tuple[dict[str, float], list[str]]:
    """ROUGE figures and the predictions as scored (for gen_len). The target is gt_output, the
    dataset's original answer, as in the reference (ref_output is Mixtral's own answer)."""
    predictions, per_pair = [], []
    for i in tqdm(indices, desc="OpenOrca ROUGE", unit="sample", disable=not progress):
        prediction = rouge_ready(texts[i])
        predictions.append(prediction)
        per_pair.append(rouge_pair(prediction, rouge_ready(str(frame.at[i, "gt_output"]))))
    return rouge_summary(per_pair), predictions


def score_gsm8k(frame: pd.DataFrame, indices: Sequence[int], texts: dict[int, str]) -> float | None:
    truths = [str(frame.at[i, "gt_output"]) for i in indices]
    unparseable = sorted({t for t in truths if not is_number(t)})
    if unparseable:
        log.warning("%d GSM8K ground truths are not numbers (scored wrong, as by the reference): %s",
                    len(unparseable), ", ".join(unparseable[:5]))
    return gsm8k_accuracy([extract_answer(texts[i]) for i in indices], truths)


def score_mbxp(frame: pd.DataFrame, indices: Sequence[int], texts: dict[int, str], skip: Collection[str],
               runner: MbxpRunner, n_workers: int, progress: bool) -> tuple[float | None, dict[str, dict[str, object]]]:
    """mbxp = 100 * passed / scored (not rounded), and a per-language breakdown."""
    tasks, unrun = [], {}
    for i in indices:
        lang, entry_point = parse_mbxp_id(str(frame.at[i, "id"]))
        if lang in SCORED_LANGUAGES and lang not in skip:
            tasks.append(MbxpTask(key=str(i), lang=lang, entry_point=entry_point, response=texts[i],
                                  test_code=str(frame.at[i, "gt_output"])))
        else:
            status = SKIPPED if lang in SCORED_LANGUAGES else UNSCORED
            unrun.setdefault(lang, {"status": status, "rows": 0})["rows"] += 1
    verdicts = runner(tasks, n_workers, progress) if tasks else []
    languages: dict[str, dict[str, object]] = dict(unrun)
    for verdict in verdicts:
        entry = languages.setdefault(verdict.lang, {"status": SCORED, "scored": 0, "passed": 0})
        entry["scored"] += 1
        entry["passed"] += int(verdict.passed)
    for entry in languages.values():
        if entry["status"] == SCORED:
            entry["mbxp"] = 100.0 * entry["passed"] / entry["scored"]
    passed = sum(int(v.passed) for v in verdicts)
    return (100.0 * passed / len(verdicts) if verdicts else None), languages


def evaluate(frame: pd.DataFrame, log_: AccuracyLog, sp: spm.SentencePieceProcessor, *, n_workers: int = 2,
             skip_languages: Collection[str] = (), progress: bool = True,
             mbxp_runner: MbxpRunner = run_mbxp) -> Evaluation:
    """The reference's figures for the samples in log_. Toolchains must have been checked."""
    result = Evaluation()
    parts = samples_by_part(frame, log_)
    result.rows = {part: len(indices) for part, indices in parts.items()}

    start = time.perf_counter()
    texts = {i: reference_decode(sp, ids) for i, ids in log_.outputs.items()}
    result.seconds["decode"] = time.perf_counter() - start

    start = time.perf_counter()
    rouge, predictions = score_openorca(frame, parts["OpenOrca"], texts, progress)
    result.figures.update(rouge)
    result.seconds["openorca"] = time.perf_counter() - start

    start = time.perf_counter()
    gsm8k = score_gsm8k(frame, parts["GSM8K"], texts)
    if gsm8k is not None:
        result.figures["gsm8k"] = gsm8k
    result.seconds["gsm8k"] = time.perf_counter() - start

    start = time.perf_counter()
    mbxp, result.mbxp_languages = score_mbxp(frame, parts["MBXP"], texts, set(skip_languages), mbxp_runner,
                                             n_workers, progress)
    if mbxp is not None:
        result.figures["mbxp"] = mbxp
    result.seconds["mbxp"] = time.perf_counter() - start

    result.figures.update(generation_stats(predictions, log_.outputs.values(), log_.entry_count))
    for part, seconds in result.seconds.items():
        log.info("%s took %.2f s", part, seconds)
    return result
