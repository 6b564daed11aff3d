"""Real servers for the endpoint backend's tests: `vllm serve` on the demo model, and a proxy in
front of it that fails on purpose (cuts a stream, answers an HTTP error, drops the token ids)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tools.vllm_server import VllmServer, free_port, running_vllm_server

API_KEY = "test-key-never-printed-7f3a"  # the servers require it: every test sends it
MODEL_NAME = "demo"
# Small engines for a shared 2-core machine; eager mode starts in seconds instead of compiling.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
SERVER_ARGS = ("--enforce-eager", "--api-key", API_KEY)


@contextlib.contextmanager
def demo_server(model_dir: Path, log_path: Path) -> Iterator[VllmServer]:
    with running_vllm_server(model_dir, log_path, served_model_name=MODEL_NAME, extra_args=SERVER_ARGS,
                             env=SERVER_ENV) as server:
        yield server


def completion_posts(server: VllmServer) -> int:
    """Completion requests the server has logged (uvicorn's access log) so far."""
    return server.log_text().count('"POST /v1/completions HTTP/1.1"')


def metric(server: VllmServer, name: str) -> float:
    """A vLLM Prometheus metric of the server, summed over its label sets."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def settled_metric(server: VllmServer, name: str, timeout_s: float = 10.0) -> float:
    """The metric once it stopped moving (two reads 0.5 s apart agree): vLLM records an engine
    step's figures after it has streamed its tokens."""
    deadline = time.monotonic() + timeout_s
    value = metric(server, name)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        value, previous = metric(server, name), value
        if value == previous:
            break
    return value


class FaultyProxy:
    """An HTTP server (aiohttp) forwarding to `upstream` that misbehaves as configured:
    cut_after_events: close the connection instead of forwarding stream event n+1 (counted over
    all streams); fail_completion: answer the k-th completion request with HTTP 500;
    strip_token_ids: forward events without their token ids (a server that cannot return them);
    ignore_stream: ask for whole answers instead of streams (a server that does not stream)."""

    def __init__(self, upstream: str, *, cut_after_events: int | None = None, fail_completion: int | None = None,
                 strip_token_ids: bool = False, ignore_stream: bool = False) -> None:
        self.upstream = upstream
        self.cut_after_events = cut_after_events
        self.fail_completion = fail_completion
        self.strip_token_ids = strip_token_ids
        self.ignore_stream = ignore_stream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.events = 0
        self.completions = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="faulty-proxy", daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, web

        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        async with ClientSession(timeout=ClientTimeout(total=None)) as self._session:
            self._started.set()
            await self._stopping.wait()
            await runner.cleanup()

    async def _forward(self, request):
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
