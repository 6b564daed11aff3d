"""One OpenAI-compatible completions server, as the endpoint backend talks to it (aiohttp, streaming).

Prompts go out as token ids and answers come back as the model's own token ids (vLLM's
`return_token_ids`), so nothing is tokenized or detokenized on either side. Every failure becomes
an EndpointError whose message is one line naming the server and what happened.

aiohttp rather than httpx: httpcore's connection pool scans every connection for every request
(measured: 8.9 million checks for 360 streamed answers), which a thousand answers in flight per
server cannot afford; aiohttp's C parser also costs a third of httpx's CPU per streamed chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from harness.backend import EOS_ID

API_KEY_ENV = "OPENAI_API_KEY"  # sent as a bearer token when set; never a flag, never logged
# Only requests that failed before any answer came back are retried (a refused connection, or a
# kept-alive connection the server had just closed, found on writing the request): no token was
# seen, so no answer can change.
SEND_RETRIES = 2
RETRY_BACKOFF_S = 0.5
CONNECT_TIMEOUT_S = 10.0
# Idle connections are dropped before the server drops them (uvicorn, under vLLM's API server:
# 5 s; aiohttp's default keeps them 15 s), which makes the race with the server's close rare.
KEEPALIVE_S = 4.0
MAX_DETAIL_CHARS = 300  # of a server's error text, in our one-line message
# Tokens per streamed chunk after the first (vLLM sends the first and the last chunk at once, so
# neither TTFT nor the completion time moves). Fewer chunks cut the cost of the HTTP hop on both
# sides about eightfold; a stop sequence is seen at most 7 tokens late, which the server then
# generates for nothing before the closed stream aborts the request.
STREAM_INTERVAL = 8


class EndpointError(Exception):
    """A server failed; str() is one line naming it."""

    def __init__(self, server: str, what: str) -> None:
        super().__init__(f"server {server}: {one_line(what)}")
        self.server = server


def one_line(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[:MAX_DETAIL_CHARS] + "..."


def normalize_url(url: str) -> str:
    """The API base of --api-server URL: http(s)://host[:port][/prefix]/v1 (/v1 added when absent)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--api-server {url}: not an http(s) URL like http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        raise ValueError(f"--api-server {url}: the port is not a number from 0 to 65535") from None
    base = url.strip().rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def completion_body(model: str, prompt_ids: Sequence[int], max_tokens: int, min_tokens: int) -> dict[str, Any]:
    """A streaming completion request with the reference's greedy decoding. Every setting that a
    server's defaults (e.g. a checkpoint's generation_config.json) could change is spelled out."""
    return {
        "model": model,
        "prompt": [int(t) for t in prompt_ids],  # plain ints: the dataset holds numpy arrays
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop_token_ids": [EOS_ID],  # a server started without a tokenizer knows no EOS
        "ignore_eos": False,
        "stream": True,
        "stream_interval": STREAM_INTERVAL,
        "return_token_ids": True,
    }


@dataclass(frozen=True)
class Chunk:
    """What one streamed event says about the (single) choice; token_ids None: the server sent none."""

    token_ids: list[int] | None
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None


def parse_event(payload: str | bytes) -> Chunk | None:
    """One `data:` payload of the stream; None for an event without a choice (usage). Raises
    ValueError with the server's message for an error event or a payload that is not a chunk."""
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        raise ValueError(f"sent a stream event that is not JSON: {payload[:80]!r}") from None
    if not isinstance(event, dict):
        raise ValueError(f"sent a stream event that is not an object: {payload[:80]!r}")
    if "error" in event or event.get("object") == "error":
        raise ValueError(f"reported an error in the stream: {error_text(event)}")
    choices = event.get("choices")
    if not choices:
        return None
    choice = choices[0]
    return Chunk(choice.get("token_ids"), choice.get("finish_reason"), choice.get("prompt_token_ids"))


def error_text(body: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}} or vLLM's {"message"})."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)


def http_error(status: int, content: bytes) -> str:
    try:
        detail = error_text(json.loads(content))
    except ValueError:
        detail = content.decode(errors="replace")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "(non-standard status)"
    hint = f" (set {API_KEY_ENV})" if status in (401, 403) else ""
    return f"HTTP {status} {reason}{hint}: {detail}" if detail.strip() else f"HTTP {status} {reason}{hint}"


def finish_problem(finish_reason: str | None, generated: int, max_tokens: int, min_tokens: int) -> str | None:
    """Why a stream that ended with this finish reason is not a whole answer; None when it is."""
    if finish_reason is None:
        return f"the stream ended without a finish reason after {generated} tokens (cut short)"
    if finish_reason == "length" and generated < max_tokens:
        return (f"capped the answer at {generated} tokens (finish_reason length): its max_model_len must hold "
                f"the prompt plus {max_tokens} new tokens")
    if finish_reason == "stop" and generated < min_tokens:
        return f"stopped after {generated} tokens although min_tokens is {min_tokens}"
    if finish_reason not in ("stop", "length"):
        return f"ended the answer with finish_reason {finish_reason!r} after {generated} tokens"
    return None


def http_session(max_connections: int) -> aiohttp.ClientSession:
    """One session for every server of a generate/serve call: one connection per streamed answer,
    no read timeout (a queued request may wait long for its first token; the SUT's watchdog
    catches a server that stalls)."""
    key = os.environ.get(API_KEY_ENV)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )


class Endpoint:
    """One server's API base. Its coroutines take the caller's session (a session belongs to one event loop)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.max_model_len: int | None = None  # from the model list, where the server says (vLLM does)

    def __repr__(self) -> str:
        return f"Endpoint({self.url})"

    def error(self, what: str) -> EndpointError:
        return EndpointError(self.url, what)

    async def served_models(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """GET /models: the entries of the models the server serves."""
        try:
            async with await self._send(session, "GET", "/models") as response:
                content = await response.read()
        except aiohttp.ClientError as exc:
            raise self.error(f"GET /models: {connection_problem(exc)}") from None
        if response.status != 200:
            raise self.error(f"GET /models: {http_error(response.status, content)}")
        try:
            return [dict(entry) for entry in json.loads(content)["data"]]
        except (ValueError, KeyError, TypeError):
            raise self.error("GET /models: the answer is not an OpenAI model list") from None

    async def stream_ids(self, session: aiohttp.ClientSession, body: dict[str, Any],
                         label: str) -> AsyncIterator[list[int]]:
        """Stream one completion: yields each chunk's new token ids (never empty). Ends only on a
        whole answer; anything else raises EndpointError. Closing the generator early closes the
        connection, which makes vLLM abort the request."""
        generated = 0
        finish_reason = None
        try:
            response = await self._send(session, "POST", "/completions", body)
        except aiohttp.ClientError as exc:
            raise self.error(f"{label}: {connection_problem(exc)}") from None
        whole = False
        try:
            if response.status != 200:
                raise self.error(f"{label}: {http_error(response.status, await response.read())}")
            if response.content_type != "text/event-stream":
                raise self.error(f"{label}: answered {response.content_type} instead of a stream "
                                 f"(text/event-stream): the harness streams every answer")
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    continue  # read on to the body's end: a whole response keeps its connection
                chunk = self._chunk(payload, label)
                if chunk is None:
                    continue
                if chunk.prompt_token_ids is not None and chunk.prompt_token_ids != body["prompt"]:
                    raise self.error(f"{label}: the server's prompt ids differ from the ids sent")
                finish_reason = chunk.finish_reason or finish_reason
                generated += len(chunk.token_ids)
                if chunk.token_ids:
                    yield chunk.token_ids
            whole = True
        except (aiohttp.ClientError, ValueError) as exc:
            raise self.error(f"{label}: the stream was cut short after {generated} tokens "
                             f"({connection_problem(exc)})") from None
        finally:
            if whole:
                response.release()
            else:  # stopped early, failed or cancelled: the server sees the connection go
                response.close()
        problem = finish_problem(finish_reason, generated, body["max_tokens"], body["min_tokens"])
        if problem is not None:
            raise self.error(f"{label}: {problem}")

    async def _send(self, session: aiohttp.ClientSession, method: str, path: str,
                    body: dict[str, Any] | None = None) -> aiohttp.ClientResponse:
        """The response once its headers are in, retrying only what failed before any answer."""
        for attempt in range(SEND_RETRIES + 1):
            try:
                return await session.request(method, f"{self.url}{path}", json=body)
            except aiohttp.ClientConnectionError:  # refused, reset, closed before the response began
                if attempt == SEND_RETRIES:
                    raise
                await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _chunk(self, payload: bytes, label: str) -> Chunk | None:
        try:
            chunk = parse_event(payload)
        except ValueError as exc:
            raise self.error(f"{label}: {exc}") from None
        if chunk is not None and chunk.token_ids is None:
            raise self.error("does not return token ids (vLLM's return_token_ids, vLLM >= 0.10.2): the harness "
                             "needs the model's own ids, not text")
        return chunk


def connection_problem(exc: BaseException) -> str:
    """What a connection failure was, in words (aiohttp's messages can be empty)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({detail})"
    return detail
