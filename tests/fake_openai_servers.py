"""Real servers for the OpenAI backend's tests: `vllm serve` on the demo model, a proxy in
front of it that fails on purpose (cuts a stream, answers an HTTP error, drops the token ids), and
fake OpenAI-compatible servers that run no model and answer as scripted (bad token ids, shapes,
endless lines, redirects, silence), each on 127.0.0.1 at a free port for the length of a `with`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.backends.factory import cpu_engine_envs
from harness.backends.protocol import EOS_ID, MIN_NEW_TOKENS
from tools.process_group import free_port
from tools.vllm_server import VllmServer, running_vllm_server

API_KEY = "test-key-never-printed-7f3a"  # the servers require it: every test sends it
MODEL_NAME = "demo"
# Small engines for a shared 2-core machine; eager mode starts in seconds instead of compiling.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
SERVER_ARGS = ("--enforce-eager", "--api-key", API_KEY)


@contextlib.contextmanager
def demo_server(model_dir: Path, log_path: Path, tensor_parallel_size: int = 1) -> Iterator[VllmServer]:
    """With tensor_parallel_size > 1, its workers are pinned as the harness pins its own engine's
    (vLLM's choice needs a NUMA node per worker)."""
    args, env = SERVER_ARGS, SERVER_ENV
    if tensor_parallel_size > 1:
        args += ("--tensor-parallel-size", str(tensor_parallel_size))
        env = {**env, **(cpu_engine_envs(tensor_parallel_size, 1) or [{}])[0]}
    with running_vllm_server(model_dir, log_path, served_model_name=MODEL_NAME, extra_args=args, env=env) as server:
        yield server


def completion_posts(server: VllmServer) -> int:
    """Completion requests the server has logged (uvicorn's access log) so far."""
    return server.log_text().count('"POST /v1/completions HTTP/1.1"')


def metric(server: VllmServer, name: str, label: str = "") -> float:
    """A vLLM Prometheus metric of the server, summed over its label sets (those with `label`,
    such as 'finished_reason="length"', when given)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line)


def settled_metric(server: VllmServer, name: str, label: str = "", timeout_s: float = 10.0) -> float:
    """The metric once it stopped moving (two reads 0.5 s apart agree): vLLM records an engine
    step's figures after it has streamed its tokens."""
    deadline = time.monotonic() + timeout_s
    value = metric(server, name, label)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        value, previous = metric(server, name, label), value
        if value == previous:
            break
    return value


class _ThreadedApp:
    """An aiohttp server on 127.0.0.1 at a free port, served by its own event loop on a thread from
    entering the `with` to leaving it; _handle answers every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)

    def __enter__(self):
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)

    async def stopped(self) -> None:
        """Returns when the server is being stopped (what a handler that never answers awaits)."""
        await self._stopping.wait()

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        from aiohttp import web

        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        async with self._resources():
            self._started.set()
            await self._stopping.wait()
            await runner.cleanup()

    def _resources(self) -> contextlib.AbstractAsyncContextManager:
        """What the handlers use, open while the server runs."""
        return contextlib.AsyncExitStack()

    async def _handle(self, request):
        raise NotImplementedError


class FaultyProxy(_ThreadedApp):
    """An HTTP server (aiohttp) forwarding to `upstream` that misbehaves as configured:
    cut_after_events: close the connection instead of forwarding stream event n+1 (counted over
    all streams); fail_completion: answer the k-th completion request with HTTP 500;
    strip_token_ids: forward events without their token ids (a server that cannot return them);
    ignore_stream: ask for whole answers instead of streams (a server that does not stream)."""

    def __init__(self, upstream: str, *, cut_after_events: int | None = None, fail_completion: int | None = None,
                 strip_token_ids: bool = False, ignore_stream: bool = False) -> None:
        super().__init__()
        self.upstream = upstream
        self.cut_after_events = cut_after_events
        self.fail_completion = fail_completion
        self.strip_token_ids = strip_token_ids
        self.ignore_stream = ignore_stream
        self.events = 0
        self.completions = 0

    @contextlib.asynccontextmanager
    async def _resources(self) -> AsyncIterator[None]:
        from aiohttp import ClientSession, ClientTimeout

        async with ClientSession(timeout=ClientTimeout(total=None)) as self._session:
            yield

    async def _handle(self, request):
        from aiohttp import web

        if request.method == "POST" and request.path.endswith("/completions"):
            self.completions += 1
            if self.completions == self.fail_completion:
                return web.json_response({"error": {"message": "injected failure", "type": "InternalServerError",
                                                    "code": 500}}, status=500)
        try:
            return await self._stream(request)
        except ConnectionResetError:  # the harness closed the connection (a failure elsewhere ended its run)
            return web.Response(status=499)

    async def _stream(self, request):
        from aiohttp import web

        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        body = await request.read()
        if self.ignore_stream and request.method == "POST":
            body = json.dumps({**json.loads(body), "stream": False}).encode()
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status,
                                          headers={"Content-Type": upstream.headers.get("Content-Type", "text/plain")})
            await response.prepare(request)
            async for line in upstream.content:
                if line.startswith(b"data: {"):
                    self.events += 1
                    if self.cut_after_events is not None and self.events > self.cut_after_events:
                        if request.transport is not None:  # (None: the harness closed it first)
                            request.transport.close()  # the connection dies in the middle of the body
                        return response
                    if self.strip_token_ids:
                        line = _without_token_ids(line)
                await response.write(line)
            await response.write_eof()
            return response


def _without_token_ids(line: bytes) -> bytes:
    event = json.loads(line[len(b"data: "):])
    for choice in event.get("choices", []):
        choice.pop("token_ids", None)
    return b"data: " + json.dumps(event).encode() + b"\n"


# --- fake servers ------------------------------------------------------------------------------
# A handler answers one request: (server, request, the request's JSON body or None) -> response.
Handler = Callable[["FakeServer", Any, Any], Awaitable[Any]]
Event = dict[str, Any] | bytes  # a dict goes out as `data: <json>`, bytes as they are


class FakeServer(_ThreadedApp):
    """An OpenAI-compatible server that runs no model: GET .../models and POST .../completions are
    answered by the given handlers (by default: MODEL_NAME listed, and good_answer streamed).
    `requests` records (method, path) of every request it got."""

    def __init__(self, completions: Handler | None = None, models: Handler | None = None) -> None:
        super().__init__()
        self.completions = completions or streamed(good_answer)
        self.models = models or model_list()
        self.requests: list[tuple[str, str]] = []

    async def _handle(self, request):
        from aiohttp import web

        self.requests.append((request.method, request.path))
        body = await request.json() if request.method == "POST" else None
        if request.path.endswith("/completions"):
            handler = self.completions
        elif request.path.endswith("/models"):
            handler = self.models
        else:
            return web.json_response({"error": {"message": f"no route {request.path}"}}, status=404)
        try:
            return await handler(self, request, body)
        except ConnectionResetError:  # the harness closed the connection (it refused what it read)
            return web.Response(status=499)


def model_list(*entries: dict[str, Any]) -> Handler:
    """The answer vLLM gives GET /v1/models; by default MODEL_NAME with a 3,072-token context."""
    listing = {"object": "list", "data": list(entries) or [{"id": MODEL_NAME, "object": "model",
                                                            "max_model_len": 3072}]}
    return raw(json.dumps(listing).encode(), content_type="application/json")


def raw(content: bytes, status: int = 200, content_type: str = "text/plain",
        headers: dict[str, str] | None = None) -> Handler:
    """The same answer to every request."""
    async def handler(server: FakeServer, request, body):
        from aiohttp import web

        return web.Response(body=content, status=status, headers={"Content-Type": content_type, **(headers or {})})

    return handler


def streamed(events: Callable[[dict[str, Any]], Iterable[Event]]) -> Handler:
    """A stream (text/event-stream) of the events for the request's body, then [DONE]."""
    async def handler(server: FakeServer, request, body):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events(body):
            await response.write(event if isinstance(event, bytes) else f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    return handler


async def never_answers(server: FakeServer, request, body):
    """Takes the request and answers nothing until the server stops."""
    await server.stopped()
    raise ConnectionResetError  # the harness is long gone


def answer_events(ids: list[Any], finish_reason: str | None, per_chunk: int = 8) -> list[Event]:
    """How vLLM streams an answer of `ids`: chunks of per_chunk ids, the finish reason on the last."""
    chunks = [ids[i:i + per_chunk] for i in range(0, len(ids), per_chunk)] or [[]]
    return [{"object": "text_completion", "choices": [
        {"index": 0, "text": "", "token_ids": chunk, "finish_reason": finish_reason if last else None}]}
        for last, chunk in ((i == len(chunks) - 1, chunk) for i, chunk in enumerate(chunks))]


def good_answer(body: dict[str, Any]) -> list[Event]:
    """A whole answer: the start-up check's two tokens, three tokens and EOS to a sample."""
    if body["max_tokens"] == MIN_NEW_TOKENS:
        return answer_events([5, 6], "length")
    return answer_events([5, 6, 7, EOS_ID], "stop")


def after_the_check(events: Callable[[dict[str, Any]], Iterable[Event]]) -> Callable[[dict[str, Any]], Iterable[Event]]:
    """A good answer to the start-up check, `events` to every sample: a server that fails mid-run."""
    return lambda body: good_answer(body) if body["max_tokens"] == MIN_NEW_TOKENS else events(body)


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """The URL of a port that takes connections (the kernel completes them into its backlog) and
    never reads or answers a byte: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
