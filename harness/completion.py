"""Completing samples towards loadgen: one place that owns every outstanding query.

Each query is completed exactly once (a second completion of an id crashes loadgen), from
whichever thread answers it; failures complete what is left so loadgen never waits forever.
Every loadgen call happens under one lock, with the state change it belongs to (each costs
microseconds, nothing next to generation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

import mlperf_loadgen as lg
import numpy as np
from tqdm import tqdm

from harness.backends.protocol import EOS_ID, GenerationRequest
from harness.journal import Journal
from harness.postprocess import postprocess_output

log = logging.getLogger(__name__)

FAILED_ANSWER = (EOS_ID, EOS_ID)  # loadgen needs n_tokens > 1 even for a sample we give up on


def _response(query_id: int, ids: Sequence[int], with_token_count: bool) -> tuple[lg.QuerySampleResponse, np.ndarray]:
    """A response over int32 bytes of ids; the array is returned so it outlives the call."""
    data = np.asarray(ids, dtype=np.int32)
    pointer = data.__array_interface__["data"][0]
    if with_token_count:
        return lg.QuerySampleResponse(query_id, pointer, data.nbytes, len(data)), data
    return lg.QuerySampleResponse(query_id, pointer, data.nbytes), data


def complete_sample(query_id: int, ids: Sequence[int]) -> None:
    response, _data = _response(query_id, ids, with_token_count=True)
    lg.QuerySamplesComplete([response])


def report_first_token(query_id: int, token_id: int) -> None:
    response, _data = _response(query_id, [token_id], with_token_count=False)
    lg.FirstTokenComplete([response])


class CompletionSink:
    """Post-processes answers, journals them, completes them, and remembers failures."""

    def __init__(self, journal: Journal | None, reports_first_token: bool, journal_group: int = 1) -> None:
        self.journal = journal
        self.reports_first_token = reports_first_token
        self.journal_group = max(1, journal_group)
        self._outstanding: dict[int, GenerationRequest] = {}
        self._first_reported: set[int] = set()
        self._pending_journal: list[tuple[int, list[int]]] = []
        self._lock = threading.Lock()
        self.failure: str | None = None
        self.completed = 0
        self.output_tokens = 0
        self.harness_seconds = 0.0  # post-processing, journal and loadgen calls, summed over threads
        self.last_progress = time.monotonic()
        self._progress = tqdm(total=0, unit="sample", desc="samples", mininterval=1.0, leave=False)

    # --- bookkeeping -------------------------------------------------------------------------
    def add(self, requests: Iterable[GenerationRequest]) -> None:
        with self._lock:
            if not self._outstanding:
                self.last_progress = time.monotonic()
            for request in requests:
                self._outstanding[request.query_id] = request
                self._progress.total += 1

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def seconds_since_progress(self) -> float:
        return time.monotonic() - self.last_progress

    # --- answers -----------------------------------------------------------------------------
    def first_token(self, request: GenerationRequest, token_id: int) -> None:
        if not self.reports_first_token:
            return
        started = time.perf_counter()
        # loadgen is called under the lock: a completion of the same query from another thread
        # (a failure path) must not overtake its first token, which loadgen would not know.
        with self._lock:
            if request.query_id not in self._outstanding or request.query_id in self._first_reported:
                return
            self._first_reported.add(request.query_id)
            self.last_progress = time.monotonic()
            report_first_token(request.query_id, token_id)
            self.harness_seconds += time.perf_counter() - started

    def done(self, request: GenerationRequest, generated: Sequence[int]) -> None:
        """A whole raw answer: post-process, journal, complete."""
        started = time.perf_counter()
        try:
            answer = postprocess_output(generated, request.stop_ids)
            self._journal(request.qsl_index, answer)
        except Exception as exc:  # a full disk must not leave the sample uncompleted
            self.fail(f"could not record sample {request.qsl_index}: {exc!r}", [request])
            return
        first = generated[0] if len(generated) else EOS_ID
        self.finish(request, answer, first)
        with self._lock:
            self.output_tokens += len(answer)
            self.harness_seconds += time.perf_counter() - started

    def finish(self, request: GenerationRequest, answer: Sequence[int], first_id: int) -> None:
        """Complete an answer that is already post-processed (and journaled), once per query;
        in Server, report its first token first if nobody did."""
        with self._lock:
            if self._outstanding.pop(request.query_id, None) is None:
                return
            if self.reports_first_token and request.query_id not in self._first_reported:
                report_first_token(request.query_id, first_id)
            self._first_reported.discard(request.query_id)
            self.completed += 1
            self.last_progress = time.monotonic()
            complete_sample(request.query_id, answer)
        self._progress.update(1)

    def _journal(self, qsl_index: int, answer: list[int]) -> None:
        if self.journal is None:
            return
        with self._lock:
            self._pending_journal.append((qsl_index, answer))
            if len(self._pending_journal) < self.journal_group:
                return
            batch, self._pending_journal = self._pending_journal, []
        self.journal.record([i for i, _ in batch], [a for _, a in batch])

    def flush_journal(self) -> None:
        with self._lock:
            batch, self._pending_journal = self._pending_journal, []
        if batch and self.journal is not None:
            self.journal.record([i for i, _ in batch], [a for _, a in batch])

    # --- failures ----------------------------------------------------------------------------
    def fail(self, reason: str, requests: Iterable[GenerationRequest] | None = None) -> None:
        """Record the first failure and complete `requests` (default: everything outstanding)
        with a placeholder answer, so that loadgen can end the test."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
                log.error("Run failed: %s", reason)
            targets = list(self._outstanding.values()) if requests is None else list(requests)
        for request in targets:
            self.finish(request, FAILED_ANSWER, EOS_ID)

    def close(self) -> None:
        self.flush_journal()
        self._progress.close()
