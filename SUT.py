"""loadgen Systems Under Test for Mixtral: Offline and Server over a generation backend.

The loadgen skeleton: issue_queries hands samples to worker threads; each worker asks its
backend for answers and completes them through the CompletionSink (which post-processes,
journals and calls loadgen). Workers live until stop(), called after StartTest returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

import mlperf_loadgen as lg

from dataset import MixtralDataset
from harness.backends.protocol import EOS_ID, DescribedFailure, GenerationBackend, GenerationRequest
from harness.completion import CompletionSink
from harness.journal import Journal

log = logging.getLogger(__name__)


class Watchdog(threading.Thread):
    """Ends a run whose outstanding samples make no progress for `timeout_s` seconds (loadgen
    would otherwise wait forever)."""

    def __init__(self, sut: _SUTBase, timeout_s: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.sut = sut
        self.timeout_s = timeout_s
        self._stopped = threading.Event()

    def run(self) -> None:
        sink = self.sut.sink
        while not self._stopped.wait(min(5.0, self.timeout_s / 4)):
            if sink.outstanding and sink.seconds_since_progress() > self.timeout_s:
                self.sut.fail(f"no sample finished for {self.timeout_s:g} s (watchdog; see --watchdog-timeout)")

    def stop(self) -> None:
        self._stopped.set()


class _SUTBase:
    """Shared lifecycle: QSL, sink, journal replay, workers, watchdog."""

    reports_first_token = False

    def __init__(
        self,
        dataset: MixtralDataset,
        backends: Sequence[GenerationBackend],
        num_workers: int = 1,
        batch_size: int = 1,
        journal: Journal | None = None,
        watchdog_timeout_s: float = 3600.0,
    ) -> None:
        self.dataset = dataset
        self.backends = list(backends)
        self.num_workers = max(num_workers, len(self.backends))
        self.batch_size = batch_size
        self.journal = journal
        self.sink = CompletionSink(journal, self.reports_first_token, self._journal_group())
        self.watchdog = Watchdog(self, watchdog_timeout_s)
        self.work: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self.workers = [
            threading.Thread(target=self._run_worker, args=(self.backends[i % len(self.backends)],),
                             name=f"sut-worker-{i}", daemon=True)
            for i in range(self.num_workers)
        ]
        self.loadgen_qsl = lg.ConstructQSL(len(dataset), len(dataset), dataset.load_samples, dataset.unload_samples)
        self.loadgen_sut = lg.ConstructSUT(self.issue_queries, self.flush_queries)

    def _journal_group(self) -> int:
        """Answers per journal file: one static batch, or (answers finishing one by one) a group
        large enough not to flood run_outputs/ with 15,000 files."""
        static_offline = not self.reports_first_token and not self.backends[0].continuous_batching
        return self.batch_size if static_offline else max(self.batch_size, 32)

    @property
    def failure(self) -> str | None:
        return self.sink.failure

    def fail(self, reason: str) -> None:
        """End the run early (a failed generation, the watchdog, Ctrl-C): every outstanding sample
        is completed as a failure, so loadgen can end its test, and the backends stop generating."""
        self.sink.fail(reason)
        for backend in self.backends:
            backend.abort()

    def start(self) -> None:
        self.watchdog.start()
        for worker in self.workers:
            worker.start()

    def issue_queries(self, samples: Sequence[lg.QuerySample]) -> None:
        # An exception escaping into loadgen kills the process later: fail the samples instead.
        # The sink only needs ids to complete a sample, so it learns them before anything can fail.
        placeholders = [GenerationRequest(qsl_index=s.index, input_ids=(), query_id=s.id) for s in samples]
        self.sink.add(placeholders)
        if self.sink.failure is not None:  # the run is ending: answer at once, generate nothing more
            self.sink.fail(self.sink.failure, placeholders)
            return
        try:
            requests = [self.dataset.request(s.index, s.id) for s in samples]
            self._dispatch(self._replay_journal(requests))
        except Exception as exc:
            self.fail(f"could not issue queries: {exc!r}")

    def flush_queries(self) -> None:
        """Nothing is held back: every issued sample is already queued."""

    def stop(self, join_timeout_s: float = 10.0) -> bool:
        """After StartTest returned: end the workers; False if one is still stuck."""
        self._stopping.set()
        for _ in self.workers:
            self.work.put(None)
        for worker in self.workers:
            worker.join(timeout=join_timeout_s)
        self.watchdog.stop()
        self.sink.close()
        return not any(worker.is_alive() for worker in self.workers)

    def destroy(self) -> None:
        lg.DestroyQSL(self.loadgen_qsl)
        lg.DestroySUT(self.loadgen_sut)

    def _replay_journal(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        """Complete samples a resumed accuracy run already answered; return the rest."""
        if self.journal is None or not self.journal.done:
            return requests
        remaining = []
        for request in requests:
            answer = self.journal.done.get(request.qsl_index)
            if answer is None:
                remaining.append(request)
            else:
                self.sink.finish(request, answer, answer[0] if answer else EOS_ID)
        return remaining

    def _generation_failed(self, exc: Exception) -> None:
        if self.sink.failure is not None:  # the backend stopped because the run was already ending
            log.debug("Generation ended after the run failed: %r", exc)
            return
        if isinstance(exc, DescribedFailure):
            log.error("Generation failed: %s", exc)
        else:
            log.exception("Generation failed")
        self.fail(f"generation failed: {type(exc).__name__}: {exc}")

    def _dispatch(self, requests: list[GenerationRequest]) -> None:
        raise NotImplementedError

    def _run_worker(self, backend: GenerationBackend) -> None:
        raise NotImplementedError


class OfflineSUT(_SUTBase):
    """All samples arrive in one call. Static-batch backends get batches of --batch-size built
    from length-sorted prompts (less padding); continuous-batching backends get their share of
    all samples at once."""

    def __init__(self, *args, sort_by_length: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sort_by_length = sort_by_length
        self.backend_seconds = 0.0  # inside backend.generate, harness callbacks included
        self._seconds_lock = threading.Lock()

    def _dispatch(self, requests: list[GenerationRequest]) -> None:
        if self.sort_by_length:
            requests = sorted(requests, key=lambda r: len(r.input_ids), reverse=True)
        if self.backends[0].continuous_batching:
            shares = [requests[i::len(self.backends)] for i in range(len(self.backends))]
            chunks = [share for share in shares if share]
        else:
            chunks = [requests[i:i + self.batch_size] for i in range(0, len(requests), self.batch_size)]
        for chunk in chunks:
            self.work.put(chunk)

    def _run_worker(self, backend: GenerationBackend) -> None:
        while (chunk := self.work.get()) is not None:
            if self.sink.failure is not None:
                self.sink.fail(self.sink.failure, chunk)
                continue
            started = time.perf_counter()
            try:
                backend.generate(chunk, on_done=self.sink.done)
            except Exception as exc:
                self._generation_failed(exc)
            with self._seconds_lock:
                self.backend_seconds += time.perf_counter() - started


class ServerSUT(_SUTBase):
    """One sample per query. Each worker runs its backend's serve loop, which reports the first
    token and completes the sample from that same worker thread (loadgen needs both calls on one
    thread)."""

    reports_first_token = True

    def _dispatch(self, requests: list[GenerationRequest]) -> None:
        for request in requests:
            self.work.put(request)

    def _run_worker(self, backend: GenerationBackend) -> None:
        try:
            backend.serve(self.work, self.sink.first_token, self.sink.done)
        except Exception as exc:
            self._generation_failed(exc)
        if self.sink.failure is not None:
            # serve returned early (abort) or raised: every sample is already answered; stay alive
            # until stop(), as loadgen needs of every thread that completed samples.
            self._stopping.wait()
