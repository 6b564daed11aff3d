"""OpenAI backend (--backend openai): the GenerationBackend protocol over one or many
OpenAI-compatible servers, each talked to by openai_client.py.

Every request streams from the least-busy server (fewest answers in flight; ties go to the one
picked longest ago), at most `concurrency` per server. The asyncio event loop runs on the thread
that called generate() or serve(), so every handler runs there too: a sample's first token and
its completion reach loadgen from one thread, as loadgen requires. Threads sharing the backend
take turns, one loop at a time. The MBXP stop ids are matched here, as the in-process backends
do; on a match the stream is closed, which makes the server abort the request.

Any server failure fails the whole call with one ApiServerError (its message names the server);
the requests still in flight are cancelled and their streams closed, and the SUT completes the
samples as failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import queue
import resource
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from harness.backends.openai_client import (
    API_KEY_ENV,
    ApiServer,
    ApiServerError,
    completion_body,
    http_session,
    normalize_url,
)
from harness.backends.protocol import (
    BOS_ID,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
    BackendStats,
    DoneHandler,
    FirstTokenHandler,
    GenerationRequest,
    context_overflow,
)
from harness.postprocess import find_stop_end

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 1024  # per server: vLLM's batch size on H100/H200, so Offline keeps it full
FEED_POLL_S = 0.1  # how often a serve loop's queue reader checks that the loop still runs
FILES_PER_PROCESS = 64  # open files besides the connections (logs, journal, libraries)
# Each start-up request (the model list, the two-token check) must be answered within this: a
# server that takes the connection and never answers would otherwise hang the harness before
# loadgen and its watchdog start. Generous, for a server busy with another run's queue.
STARTUP_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_ENV = "MIXTRAL_API_STARTUP_TIMEOUT_S"

T = TypeVar("T")


def least_busy(in_flight: Sequence[int], last_pick: Sequence[int]) -> int:
    """Index of the server with the fewest answers in flight; on a tie, the one picked longest ago
    (so that a light load is spread too)."""
    return min(range(len(in_flight)), key=lambda i: (in_flight[i], last_pick[i]))


class Router:
    """Slots on the servers for one event loop: a bound per server, least-busy choice."""

    def __init__(self, api_servers: Sequence[ApiServer], concurrency: int, sent: Counter[str]) -> None:
        self._api_servers = list(api_servers)
        self._slots = asyncio.Semaphore(concurrency * len(api_servers))
        self._in_flight = [0] * len(api_servers)
        self._last_pick = [-1] * len(api_servers)
        self._picks = itertools.count()
        self._sent = sent

    async def acquire(self) -> int:
        # A free slot overall means a server below its bound: the least-busy one is below it.
        await self._slots.acquire()
        index = least_busy(self._in_flight, self._last_pick)
        self._in_flight[index] += 1
        self._last_pick[index] = next(self._picks)
        self._sent[self._api_servers[index].url] += 1
        return index

    def release(self, index: int) -> None:
        self._in_flight[index] -= 1
        self._slots.release()


class OpenAIBackend:
    """Generation on OpenAI-compatible servers (vLLM, or any that streams token ids)."""

    continuous_batching = True  # the servers schedule: give them everything at once

    def __init__(self, api_servers: Sequence[ApiServer], model: str, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError(f"--api-concurrency must be at least 1, got {concurrency}")
        self.api_servers = list(api_servers)
        self.model = model
        self.concurrency = concurrency
        self.sent: Counter[str] = Counter()  # requests sent, per server URL
        self._turn = threading.Lock()  # one event loop at a time
        self._state = threading.Lock()  # guards _aborted and _cancel
        self._aborted = False
        self._cancel: Callable[[], None] | None = None

    # --- the protocol ------------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        """Every request at once, `concurrency` per server in flight. After abort() the answers
        not finished are empty."""
        answers: list[list[int]] = [[] for _ in requests]

        async def answer(session: aiohttp.ClientSession, router: Router, position: int) -> None:
            request = requests[position]
            if (ids := await self._answer(session, router, request, on_first_token)) is None:
                return
            answers[position] = ids
            if on_done is not None:
                on_done(request, ids)

        async def run(session: aiohttp.ClientSession, router: Router) -> None:
            async with asyncio.TaskGroup() as group:
                for position in range(len(requests)):
                    group.create_task(answer(session, router, position))

        self._run_loop(run)
        return answers

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        """Send each request as it arrives, until a None is taken and every answer is in. Several
        serving threads may share one queue (one None each); anything after this loop's None
        stays in the queue."""

        async def answer(session: aiohttp.ClientSession, router: Router, request: GenerationRequest) -> None:
            if (ids := await self._answer(session, router, request, on_first_token)) is not None:
                on_done(request, ids)

        async def run(session: aiohttp.ClientSession, router: Router) -> None:
            arrivals: asyncio.Queue[GenerationRequest | None] = asyncio.Queue()
            stop = threading.Event()
            reader = threading.Thread(target=_read_queue, args=(requests, asyncio.get_running_loop(), arrivals, stop),
                                      name="openai-queue-reader", daemon=True)
            reader.start()
            try:
                async with asyncio.TaskGroup() as group:
                    while (request := await arrivals.get()) is not None:
                        group.create_task(answer(session, router, request))
            finally:
                stop.set()
                reader.join()  # at most FEED_POLL_S: it must not take items meant for another loop

        self._run_loop(run)

    def warm_up(self) -> None:
        """Nothing more to do: the start-up check (build_openai_backend) already had every server
        generate for a short prompt."""

    def abort(self) -> None:
        """Cancel the running loop (its streams close, so the servers abort their requests); the
        running generate()/serve() returns without handing over unfinished answers."""
        with self._state:
            self._aborted = True
            cancel = self._cancel
        if cancel is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile: nothing left to cancel
                cancel()

    def stats(self) -> BackendStats:
        return BackendStats(requests_per_server=dict(self.sent))

    def close(self) -> None:
        """Nothing to release: connections live only as long as one generate/serve call."""
        for url, count in sorted(self.sent.items()):
            logger.info("%s: %d requests", url, count)

    # --- the loop ----------------------------------------------------------------------------
    def _run_loop(self, work: Callable[[aiohttp.ClientSession, Router], Awaitable[None]]) -> None:
        """Run `work` in a new event loop on this thread; return quietly after abort(); raise a
        failure as itself (the first one), not as an exception group."""
        with self._turn:
            try:
                asyncio.run(self._abortable(work))
            except asyncio.CancelledError:
                if not self._aborted:
                    raise
            except BaseExceptionGroup as group:
                raise _first_error(group) from None

    async def _abortable(self, work: Callable[[aiohttp.ClientSession, Router], Awaitable[None]]) -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        with self._state:
            if self._aborted:
                return
            self._cancel = lambda: loop.call_soon_threadsafe(task.cancel)
        try:
            async with http_session(self.concurrency * len(self.api_servers)) as session:
                await work(session, Router(self.api_servers, self.concurrency, self.sent))
        finally:
            with self._state:
                self._cancel = None

    async def _answer(self, session: aiohttp.ClientSession, router: Router, request: GenerationRequest,
                      on_first_token: FirstTokenHandler | None) -> list[int] | None:
        """One answer, streamed from the least-busy server: raw ids, cut right after the stop ids.
        None once abort() was called. Its cancellation reaches this task only when it next waits for
        the server, and what the server sent meanwhile is already read: none of it is handed over."""
        index = await router.acquire()
        api_server = self.api_servers[index]
        try:
            label = f"sample {request.qsl_index}"
            check_fits(api_server, request)
            body = completion_body(self.model, request.input_ids, MAX_NEW_TOKENS, MIN_NEW_TOKENS)
            ids: list[int] = []
            async with contextlib.aclosing(api_server.stream_ids(session, body, label)) as stream:
                async for new_ids in stream:
                    if self._aborted:
                        return None
                    if not ids and on_first_token is not None:
                        on_first_token(request, new_ids[0])
                    seen = len(ids)
                    ids.extend(new_ids)
                    stop_end = find_stop_end(ids, request.stop_ids, start=seen)
                    if stop_end is not None:
                        # The reference keeps the stop ids; leaving the stream closes it.
                        del ids[stop_end:]
                        break
            return None if self._aborted else ids
        finally:
            router.release(index)


def check_fits(api_server: ApiServer, request: GenerationRequest) -> None:
    """Refuse a prompt the server would silently give fewer than MAX_NEW_TOKENS new tokens."""
    if (problem := context_overflow(request, api_server.max_model_len)) is not None:
        raise api_server.error(f"{problem} (serve with --max-model-len {len(request.input_ids) + MAX_NEW_TOKENS} "
                             "or more)")


def _read_queue(requests: queue.Queue, loop: asyncio.AbstractEventLoop, arrivals: asyncio.Queue,
                stop: threading.Event) -> None:
    """Move arrivals from the SUT's queue into the loop, up to and including a None. A blocking
    get returns as soon as a query arrives; the timeout only lets the thread see `stop`."""
    while not stop.is_set():
        try:
            item = requests.get(timeout=FEED_POLL_S)
        except queue.Empty:
            continue
        try:
            loop.call_soon_threadsafe(arrivals.put_nowait, item)
        except RuntimeError:  # the loop ended (a failure): the SUT fails what is outstanding
            return
        if item is None:
            return


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first failure of a task group, preferring a server's error over what it caused."""
    leaves = list(_leaves(group))
    return next((e for e in leaves if isinstance(e, ApiServerError)), leaves[0])


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


# --- building --------------------------------------------------------------------------------
def choose_model(server: str, served: Sequence[str], requested: str | None) -> str:
    """The model to ask one server for: the one named, or the only one it serves."""
    if requested is not None:
        if requested not in served:
            raise ApiServerError(server, f"does not serve model {requested!r} (--api-model-name); it serves "
                                        f"{', '.join(map(repr, served)) or 'no model'}")
        return requested
    if len(served) != 1:
        raise ApiServerError(server, f"serves {len(served)} models ({', '.join(map(repr, served))}): name one with "
                                    f"--api-model-name")
    return served[0]


def startup_timeout_s() -> float:
    """The limit on each start-up request: $MIXTRAL_API_STARTUP_TIMEOUT_S seconds, else STARTUP_TIMEOUT_S."""
    value = os.environ.get(STARTUP_TIMEOUT_ENV)
    if value is None:
        return STARTUP_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{STARTUP_TIMEOUT_ENV}={value!r}: not a number of seconds above 0")
    return seconds


async def answered_within(api_server: ApiServer, seconds: float, what: str, work: Awaitable[T]) -> T:
    """work's result, or ApiServerError when the server has not answered within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise api_server.error(f"{what}: no answer within {seconds:g} s (the start-up limit, set by "
                             f"{STARTUP_TIMEOUT_ENV})") from None


async def _resolve(api_servers: Sequence[ApiServer], requested: str | None, session: aiohttp.ClientSession,
                   timeout_s: float) -> str:
    """The one model name every server serves; sets each server's max_model_len."""
    listings = await asyncio.gather(*(answered_within(e, timeout_s, "GET /models", e.served_models(session))
                                      for e in api_servers))
    key = os.environ.get(API_KEY_ENV)
    names = []
    for api_server, entries in zip(api_servers, listings, strict=True):
        name = choose_model(api_server.url, [entry["id"] for entry in entries], requested)
        if key and key in name:  # the name goes into logs and the journal
            raise api_server.error(f"serves a model whose name holds the API key (${API_KEY_ENV})")
        entry = next(entry for entry in entries if entry["id"] == name)
        api_server.max_model_len = entry.get("max_model_len")
        names.append(name)
    if len(set(names)) > 1:
        served = ", ".join(f"{name!r} at {e.url}" for name, e in zip(names, api_servers, strict=True))
        raise ApiServerError(api_servers[0].url, f"the servers serve different models ({served}): name one with "
                                              f"--api-model-name")
    return names[0]


async def _probe(api_server: ApiServer, model: str, session: aiohttp.ClientSession) -> None:
    """A two-token completion through the same streaming path: the server takes token-id prompts,
    greedy settings, min_tokens, and returns token ids."""
    body = completion_body(model, [BOS_ID], max_tokens=MIN_NEW_TOKENS, min_tokens=MIN_NEW_TOKENS)
    async with contextlib.aclosing(api_server.stream_ids(session, body, "start-up check")) as stream:
        async for _ in stream:
            pass


def _run_sync(work: Callable[[aiohttp.ClientSession], Awaitable[T]], connections: int) -> T:
    async def run() -> T:
        async with http_session(connections) as session:
            return await work(session)

    return asyncio.run(run())


@dataclass(frozen=True)
class ServedModel:
    """The servers of a run and the model they serve, their max_model_len known (one GET /models
    each)."""

    api_servers: list[ApiServer]
    model: str


def find_served_model(servers: Sequence[str], model_name: str | None = None,
                      timeout_s: float | None = None) -> ServedModel:
    """The model the flags select on these servers (--api-model-name, or the only one served);
    raises ApiServerError naming the server that cannot serve it or does not answer within
    timeout_s (default: startup_timeout_s()), ValueError for a bad URL."""
    timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
    api_servers = [ApiServer(url) for url in servers]
    model = _run_sync(lambda session: _resolve(api_servers, model_name, session, timeout_s), len(api_servers))
    return ServedModel(api_servers, model)


def raise_open_files_limit(needed: int) -> None:
    """One connection per answer in flight: lift the soft limit on open files as far as needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(f"--api-concurrency: {needed} open files needed, the limit is {hard} (ulimit -n); "
                             f"lower --api-concurrency")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def check_api_flags(backend: str, servers: Sequence[str] | None, model_name: str | None) -> None:
    """The --backend openai flags, before anything starts; ValueError naming the flag."""
    if backend != "openai":
        if servers or model_name:
            raise ValueError("--api-server and --api-model-name are for --backend openai")
        return
    if not servers:
        raise ValueError("--backend openai needs --api-server URL (a running OpenAI-compatible server)")
    urls = [normalize_url(url) for url in servers]
    if len(set(urls)) < len(urls):
        raise ValueError("--api-server: the same server is given twice")


def build_openai_backend(servers: Sequence[str], model_name: str | None = None,
                         concurrency: int = DEFAULT_CONCURRENCY, timeout_s: float | None = None,
                         served: ServedModel | None = None) -> OpenAIBackend:
    """Check every server before the run (reachable, serves the model, streams token ids, each
    request answered within timeout_s, default startup_timeout_s()) and return the backend over
    all of them. served: what find_served_model already found for these flags (its model list is
    not asked for again). Raises ApiServerError or ValueError, one line each."""
    check_api_flags("openai", servers, model_name)
    timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
    api_servers = served.api_servers if served is not None else [ApiServer(url) for url in servers]
    raise_open_files_limit(concurrency * len(api_servers) + FILES_PER_PROCESS)

    async def check(session: aiohttp.ClientSession) -> str:
        model = served.model if served is not None else await _resolve(api_servers, model_name, session, timeout_s)
        await asyncio.gather(*(answered_within(e, timeout_s, "start-up check", _probe(e, model, session))
                               for e in api_servers))
        return model

    model = _run_sync(check, len(api_servers))
    logger.info("Serving model %r from %s", model, ", ".join(e.url for e in api_servers))
    return OpenAIBackend(api_servers, model, concurrency)
