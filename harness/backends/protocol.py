"""What every generation backend (HuggingFace static and in-flight, vLLM, OpenAI-compatible servers)
offers the SUT, and the rules they share.

A backend turns token-id prompts into raw generated ids (greedy, min 2 / max 1024 new tokens,
the request's stop ids honoured). Post-processing, journaling and loadgen calls stay in the SUT,
so every backend is held to the same answers.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.postprocess import strip_trailing
from harness.tokenizer import BOS_ID as BOS_ID  # re-exported: the id every prompt starts with
from harness.tokenizer import EOS_ID as EOS_ID  # re-exported: the id every backend pads and stops with

MIN_NEW_TOKENS = 2
MAX_NEW_TOKENS = 1024
MAX_PROMPT_TOKENS = 2048  # the dataset's longest prompt; the engines' context is sized for it plus an answer
MAX_SEQUENCE_TOKENS = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS  # the context the engines hold
MBXP_STOP_IDS = (13, 13940, 28832, 13)  # "\n```\n"
IDLE_POLL_S = 0.2  # how often a backend loop waiting for work looks at abort()
# warm_up()'s prompt: synthetic ids, not a dataset row (the benchmark's samples are seen only in
# the test), as long as a short prompt of the dataset; low ids, which any vocabulary has.
WARM_UP_PROMPT = (1, *range(100, 163))
WARM_UP_NEW_TOKENS = 4


class DescribedFailure(Exception):
    """A generation failure whose message already says, in one line, what failed and where (a
    server's misbehaviour, say): the run reports that line, and a traceback would add nothing."""


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to answer. stop_ids: () or MBXP_STOP_IDS; when the generated ids end with
    them, that request stops (the ids are kept)."""

    qsl_index: int
    input_ids: Sequence[int]
    stop_ids: tuple[int, ...] = ()
    query_id: int = 0  # loadgen's response id; 0 outside loadgen


def context_overflow(request: GenerationRequest, max_model_len: int | None) -> str | None:
    """None when the prompt plus MAX_NEW_TOKENS fits in max_model_len (None: not known, taken as
    fitting); else the line that says so. A prompt that does not fit would get fewer than
    MAX_NEW_TOKENS new tokens, silently, so the engines refuse it."""
    needed = len(request.input_ids) + MAX_NEW_TOKENS
    if max_model_len is None or needed <= max_model_len:
        return None
    return (f"sample {request.qsl_index}: {len(request.input_ids)} input + {MAX_NEW_TOKENS} new tokens exceed "
            f"max_model_len {max_model_len}")


@dataclass
class PaddingStats:
    """Real tokens against the slots a static batch computes (prompt padding, finished rows)."""

    prompt_tokens: int = 0
    prompt_slots: int = 0
    generated_tokens: int = 0
    generated_slots: int = 0

    def add(self, prompt_lengths: Sequence[int], width: int, answers: Sequence[Sequence[int]]) -> None:
        self.prompt_tokens += sum(prompt_lengths)
        self.prompt_slots += width * len(prompt_lengths)
        self.generated_tokens += sum(len(strip_trailing(a)) for a in answers)
        self.generated_slots += max((len(a) for a in answers), default=0) * len(answers)


@dataclass(frozen=True)
class BackendStats:
    """What the benchmarks report of a backend, beyond loadgen's figures; None where the engine
    keeps no such counter."""

    padding: PaddingStats | None = None  # static batches (hf static)
    requests_per_server: dict[str, int] | None = None  # OpenAI-compatible servers: how the load was spread


FirstTokenHandler = Callable[[GenerationRequest, int], None]
DoneHandler = Callable[[GenerationRequest, list[int]], None]


class GenerationBackend(Protocol):
    # True: the engine schedules requests itself (give it everything at once);
    # False: static batches, the SUT hands it --batch-size samples at a time.
    continuous_batching: bool

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        """Answer every request; return raw generated ids (no prompt; trailing EOS/pad allowed)
        in request order. Handlers run on the calling thread as soon as a request's first
        token, or its whole answer, exists."""
        ...

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        """Answer requests as they arrive (Server scenario) until a None is taken from the
        queue and everything in flight is done. Handlers run on the calling thread."""
        ...

    def warm_up(self) -> None:
        """Before loadgen's test: generate WARM_UP_NEW_TOKENS ids for WARM_UP_PROMPT, so that the
        engine's first-step costs (allocations, first kernel calls) are not paid by the first
        query. A demo Server query paid 0.4-0.6 s for them beside a busy neighbour."""
        ...

    def abort(self) -> None:
        """Stop generating as soon as the current engine step (static batches: the current batch)
        ends: running generate() and serve() calls return promptly, without handing over the
        requests they had not finished. Called from another thread (Ctrl-C); idempotent; the
        backend is not used again afterwards."""
        ...

    def stats(self) -> BackendStats:
        """The counters the benchmarks report (a copy, taken now)."""
        ...

    def close(self) -> None:
        """Release what the backend holds outside this process (engine processes)."""
        ...
