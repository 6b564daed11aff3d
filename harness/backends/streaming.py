"""The loop the streaming engines share (hf_inflight.py, vllm_engine.py): requests go to an engine
that schedules them itself, and its outputs are consumed on the calling thread.

Every handler runs on the thread that drives the loop, which keeps a sample's first token and its
completion on one thread, as loadgen requires. Neither engine has a token-sequence stop, so the
MBXP stop ids are matched here as the ids arrive, and the request is cancelled in the engine as
soon as its ids contain them (the reference keeps the stop ids and generates nothing useful after
them). An engine module says only what is its own: how to add a request, how to read its outputs,
how to cancel requests and how to tell that the engine still runs. take_waiting, the Server
queue's reading, serves the static batches of hf_static.py too.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from harness.backends.protocol import (
    IDLE_POLL_S,
    BackendStats,
    DoneHandler,
    FirstTokenHandler,
    GenerationRequest,
)
from harness.postprocess import find_stop_end


def take_waiting(requests: queue.Queue[GenerationRequest | None], wait: bool,
                 limit: int | None = None) -> tuple[list[GenerationRequest], bool]:
    """The Server queue's waiting requests, at most `limit` (None: no bound), up to its None; and
    whether the None was taken. wait: block for the first one, up to IDLE_POLL_S, so that an idle
    loop costs nothing and still wakes now and then to notice abort(). Anything after the None
    stays in the queue (several serving threads may share one queue, one None each)."""
    taken: list[GenerationRequest] = []
    while limit is None or len(taken) < limit:
        try:
            item = requests.get(timeout=IDLE_POLL_S) if wait else requests.get_nowait()
        except queue.Empty:
            return taken, False
        if item is None:
            return taken, True
        taken.append(item)
        wait = False
    return taken, False


@dataclass
class InFlight:
    request: GenerationRequest
    ids: list[int] = field(default_factory=list)  # generated ids so far


@dataclass(frozen=True)
class EngineOutput:
    """One output of an engine for one request: its new ids (delta engines) or every id generated
    so far (cumulative ones, see StreamingBackend.cumulative_outputs)."""

    request_id: str
    ids: Sequence[int]  # cumulative engines: a list of the output's own, kept without a copy
    finished: bool


class StreamingBackend:
    """generate() and serve() over an engine that batches continuously; threads sharing one
    backend take turns (one consuming loop at a time). Subclasses set the class attributes and
    write the engine hooks below."""

    continuous_batching = True  # the engine schedules: give it everything at once
    cumulative_outputs = False  # True: an output carries every id generated so far, not just the new ones
    generate_poll_s: float | None = None  # generate(): longest wait for an output (None: the engine's step)
    serve_poll_s: float | None = None  # serve(): longest wait for an output before arrivals are looked at

    def __init__(self) -> None:
        self._in_flight: dict[str, InFlight] = {}
        self._loop = threading.Lock()
        self._aborted = threading.Event()
        self._ids = itertools.count()

    # --- the engine's own part ---------------------------------------------------------------
    def _submit(self, request_id: str, request: GenerationRequest, streaming: bool) -> None:
        """Hand the request to the engine. streaming: its ids are wanted as they come (False: only
        the whole answer, where the engine can tell the difference)."""
        raise NotImplementedError

    def _outputs(self, timeout: float | None) -> Iterator[EngineOutput]:
        """The engine's outputs until none is waiting, the first waited for up to `timeout`;
        raises when the engine failed."""
        raise NotImplementedError

    def _cancel(self, request_ids: list[str]) -> None:
        """Drop these requests from the engine."""
        raise NotImplementedError

    def _check_request(self, request: GenerationRequest) -> None:
        """Refuse, before it reaches the engine, a request the engine cannot answer in full."""

    def _arrival_capacity(self) -> int | None:
        """Most requests in flight that serve() takes from the queue (None: no bound)."""
        return None

    # --- the protocol ------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        """Every request goes to the engine at once; it batches them continuously. Only rows that
        need their ids as they come (first tokens wanted, stop ids to match) stream."""
        for request in requests:
            self._check_request(request)
        answers: list[list[int]] = [[] for _ in requests]
        with self._loop, self._cancel_on_exit():
            order = {self._add(r, streaming=on_first_token is not None or bool(r.stop_ids)): i
                     for i, r in enumerate(requests)}
            while self._in_flight and not self._aborted.is_set():
                for request_id, request, ids in self._drain(on_first_token, self.generate_poll_s):
                    answers[order[request_id]] = ids
                    if on_done is not None:
                        on_done(request, ids)
        return answers

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        """Arrivals join the engine between its outputs until None, then what is in flight
        finishes. Several serving threads (replicas) may share one queue: put one None per thread.
        Anything after the None this loop took stays in the queue."""
        closing = False
        with self._loop, self._cancel_on_exit():
            while (not closing or self._in_flight) and not self._aborted.is_set():
                if not closing:
                    closing = self._take_arrivals(requests, wait=not self._in_flight)
                if self._in_flight:
                    for _, request, ids in self._drain(on_first_token, self.serve_poll_s):
                        on_done(request, ids)

    def abort(self) -> None:
        self._aborted.set()

    def stats(self) -> BackendStats:
        return BackendStats()

    # --- the loop ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _cancel_on_exit(self) -> Iterator[None]:
        """Whatever ends a loop early (abort(), a raising handler, a failed engine) cancels its
        requests in the engine, so that they stop using it and a later call starts clean; the
        caller fails the samples it did not complete."""
        try:
            yield
        finally:
            if self._in_flight:
                with contextlib.suppress(Exception):  # the engine itself may be what failed
                    self._cancel(list(self._in_flight))
                self._in_flight.clear()

    def _take_arrivals(self, requests: queue.Queue[GenerationRequest | None], wait: bool) -> bool:
        """Add the waiting requests, up to _arrival_capacity() in flight (block for the first one
        when idle); True once None was taken. The bound leaves the rest of a shared queue to the
        other replicas."""
        capacity = self._arrival_capacity()
        room = None if capacity is None else max(capacity - len(self._in_flight), 0)
        arrived, closing = take_waiting(requests, wait, room)
        for request in arrived:
            self._check_request(request)
            self._add(request, streaming=True)
        return closing

    def _add(self, request: GenerationRequest, streaming: bool) -> str:
        request_id = f"{request.qsl_index}-{next(self._ids)}"
        self._submit(request_id, request, streaming)
        self._in_flight[request_id] = InFlight(request)
        return request_id

    def _drain(self, on_first_token: FirstTokenHandler | None,
               timeout: float | None) -> list[tuple[str, GenerationRequest, list[int]]]:
        """The engine's waiting outputs: first tokens reported, stop ids applied; the requests
        that ended, with their raw ids."""
        finished = []
        for output in self._outputs(timeout):
            state = self._in_flight.get(output.request_id)
            if state is None:  # a request already stopped at its stop ids
                continue
            seen = len(state.ids)
            if self.cumulative_outputs:
                state.ids = output.ids  # type: ignore[assignment]  # the output's own list
            else:
                state.ids.extend(output.ids)
            if seen == 0 and state.ids and on_first_token is not None:
                on_first_token(state.request, state.ids[0])
            stop_end = find_stop_end(state.ids, state.request.stop_ids, start=seen)
            if stop_end is not None and not output.finished:
                self._cancel([output.request_id])
            if stop_end is not None or output.finished:
                del self._in_flight[output.request_id]
                finished.append((output.request_id, state.request, state.ids[:stop_end]))
        return finished
