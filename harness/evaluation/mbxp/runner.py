"""Check many MBXP answers in parallel: one flat verdict per answer, sorted by key."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from harness.evaluation.mbxp.languages import RUN_TIMEOUT_S, check_compiled_language, check_python
from harness.evaluation.mbxp.programs import SCORED_LANGUAGES, MbxpTask, MbxpVerdict
from harness.evaluation.mbxp.sandbox import Confinement, Supervisors
from harness.evaluation.mbxp.toolchains import Toolchains, locate_toolchains

logger = logging.getLogger(__name__)


def _check(task: MbxpTask, tools: Toolchains, confinement: Confinement, run_timeout_s: float) -> MbxpVerdict:
    try:
        if task.lang == "python":
            passed, result = check_python(task, confinement, run_timeout_s)
        else:
            passed, result = check_compiled_language(task, tools, confinement, run_timeout_s)
    except Exception as error:  # as in the reference, a checker error fails the answer rather than the run
        logger.exception("checking %s failed", task.key)
        passed, result = False, f"failed: checker error: {error}"
    return MbxpVerdict(task.key, task.lang, passed, result)


def run_mbxp(tasks: Sequence[MbxpTask], n_workers: int, progress: bool = True, *,
             run_timeout_s: float = RUN_TIMEOUT_S, supervisors: Supervisors | None = None,
             check_memory_bytes: int | None = None) -> list[MbxpVerdict]:
    """Checks every task, n_workers at a time (each check is a few processes; workers are threads
    that wait on them). Raises ValueError for tasks in unscored languages and RuntimeError naming
    the missing toolchains, or when no interpreter can run python answers unprivileged, before
    checking anything. An exception while waiting (an interrupt) ends the running checks, starts
    no other, and is raised once their folders are removed. `supervisors`: to share with other
    calls, so that one stop() ends them all. `check_memory_bytes`: what the processes of one check
    may hold together, instead of the default of the bound the machine allows (sandbox.py)."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    unscored = sorted({task.lang for task in tasks} - set(SCORED_LANGUAGES))
    if unscored:
        raise ValueError(f"MBXP tasks in unscored languages {unscored}; keep only {SCORED_LANGUAGES}")
    languages = {task.lang for task in tasks}
    tools = locate_toolchains(languages)
    confinement = Confinement.for_workers(n_workers, python_answers="python" in languages, supervisors=supervisors,
                                          check_memory_bytes=check_memory_bytes)
    logger.info("MBXP: %d answers, %d workers; %s", len(tasks), n_workers, confinement.describe())
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        futures = [pool.submit(_check, task, tools, confinement, run_timeout_s) for task in tasks]
        try:
            with confinement.supervisors.stopped_on_error():
                verdicts = [future.result() for future in tqdm(as_completed(futures), total=len(futures), desc="MBXP",
                                                               unit="answer", disable=not progress)]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # leaving the block then waits for the running ones
            raise
    return sorted(verdicts, key=lambda verdict: verdict.key)
