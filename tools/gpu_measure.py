"""Measuring a generation backend at a few batch sizes within a time budget (for tools/gpu_check.py).

Backend-agnostic: anything with the GenerationBackend protocol's generate(). Memory is read by a
function the caller passes, since where it lives differs (this process's allocator for HF, the
whole device for vLLM's engine processes).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from harness.backends.protocol import GenerationBackend, GenerationRequest
from harness.postprocess import strip_trailing

logger = logging.getLogger(__name__)

MemoryReader = Callable[[], float | None]  # GB, or None where it cannot be told


class OverBudget(Exception):
    pass


@contextlib.contextmanager
def deadline_after(seconds: float) -> Iterator[None]:
    """Raise OverBudget in this (main) thread once `seconds` have passed: a hard stop for a run."""
    def expire(*_: Any) -> None:
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def measure(backend: GenerationBackend, prompts: Sequence[Sequence[int]], memory: MemoryReader) -> dict[str, Any]:
    """One generate over a batch: time to first token, total time, tokens/s, memory after it."""
    requests = [GenerationRequest(qsl_index=i, input_ids=p) for i, p in enumerate(prompts)]
    first_token_at: list[float] = []
    start = time.perf_counter()
    answers = backend.generate(requests, on_first_token=lambda *_: first_token_at.append(time.perf_counter()))
    total_s = time.perf_counter() - start
    generated = sum(len(strip_trailing(a)) for a in answers)  # the n_tokens the SUT would report
    used = memory()
    return {
        "batch_size": len(prompts),
        "prompt_tokens_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "padded_prompt_tokens": max(len(p) for p in prompts),
        "generated_tokens": generated,
        "ttft_s": round(first_token_at[0] - start, 4),
        "total_s": round(total_s, 4),
        "tokens_per_s": round(generated / total_s, 2),
        "peak_memory_gb": None if used is None else round(used, 3),
    }


def run_batches(batch_sizes: Sequence[int], backend_for: Callable[[int], GenerationBackend],
                prompts: Sequence[Sequence[int]], deadline: float, memory: MemoryReader,
                before_each: Callable[[], None] = lambda: None,
                out_of_memory: tuple[type[BaseException], ...] = (), close_each: bool = False) -> tuple[list, list]:
    """Measure each batch size in turn; skip one whose predicted time (the last run's, scaled
    linearly with batch size: pessimistic for decode) would pass the deadline. close_each: each
    backend is closed after its run (one holding a KV cache sized from free memory)."""
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        left = deadline - time.perf_counter()
        if runs and runs[-1]["total_s"] * batch_size / runs[-1]["batch_size"] > left:
            skipped.append({"batch_size": batch_size, "reason": "time budget (predicted)"})
            continue
        backend = backend_for(batch_size)
        before_each()
        try:
            with deadline_after(left):
                runs.append(measure(backend, prompts[:batch_size], memory))
        except OverBudget:
            skipped.append({"batch_size": batch_size, "reason": "time budget (cut short)"})
        except out_of_memory:
            skipped.append({"batch_size": batch_size, "reason": "out of memory"})
        finally:
            if close_each:
                backend.close()
        logger.info("batch %d done", batch_size)
    return runs, skipped


def path_summary(build_s: float, runs: list, skipped: list, **extra: Any) -> dict[str, Any]:
    """What each path reports besides its runs."""
    memories = [r["peak_memory_gb"] for r in runs if r["peak_memory_gb"] is not None]
    return {"build_s": round(build_s, 2), "runs": runs, "skipped": skipped,
            "peak_memory_gb": max(memories, default=None), **extra}
