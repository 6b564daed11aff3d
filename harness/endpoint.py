"""One OpenAI-compatible completions server, as the endpoint backend talks to it (httpx, streaming).

Prompts go out as token ids and answers come back as the model's own token ids (vLLM's
`return_token_ids`), so nothing is tokenized or detokenized on either side. Every failure becomes
an EndpointError whose message is one line naming the server and what happened.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from harness.backend import EOS_ID

API_KEY_ENV = "OPENAI_API_KEY"  # sent as a bearer token when set; never a flag, never logged
CONNECT_RETRIES = 2  # only failed connection attempts are retried: nothing was sent, no answer can change
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 60.0
MAX_DETAIL_CHARS = 300  # of a server's error text, in our one-line message


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
        "return_token_ids": True,
    }


@dataclass(frozen=True)
class Chunk:
    """What one streamed event says about the (single) choice; token_ids None: the server sent none."""

    token_ids: list[int] | None
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None


def parse_event(payload: str) -> Chunk | None:
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
    reason = httpx.codes.get_reason_phrase(status)
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


def http_client(max_connections: int) -> httpx.AsyncClient:
    """One client for every server of a generate/serve call: one connection per streamed answer,
    no read timeout (a queued request may wait long for its first token; the SUT's watchdog
    catches a server that stalls)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    key = os.environ.get(API_KEY_ENV)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(retries=CONNECT_RETRIES, limits=limits),
        timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=None, write=WRITE_TIMEOUT_S, pool=None),
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )


class Endpoint:
    """One server's API base. Its coroutines take the caller's client (clients belong to one event loop)."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.max_model_len: int | None = None  # from the model list, where the server says (vLLM does)

    def __repr__(self) -> str:
        return f"Endpoint({self.url})"

    def error(self, what: str) -> EndpointError:
        return EndpointError(self.url, what)

    async def served_models(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """GET /models: the entries of the models the server serves."""
        try:
            response = await client.get(f"{self.url}/models")
        except httpx.TransportError as exc:
            raise self.error(transport_problem(exc)) from None
        if response.status_code != 200:
            raise self.error(f"GET /models: {http_error(response.status_code, response.content)}")
        try:
            return [dict(entry) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise self.error("GET /models: the answer is not an OpenAI model list") from None

    async def stream_ids(self, client: httpx.AsyncClient, body: dict[str, Any], label: str) -> AsyncIterator[list[int]]:
        """Stream one completion: yields each chunk's new token ids (never empty). Ends only on a
        whole answer; anything else raises EndpointError. Closing the generator early closes the
        connection, which makes vLLM abort the request."""
        generated = 0
        finish_reason = None
        try:
            async with client.stream("POST", f"{self.url}/completions", json=body) as response:
                if response.status_code != 200:
                    raise self.error(f"{label}: {http_error(response.status_code, await response.aread())}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = self._chunk(payload, label)
                    if chunk is None:
                        continue
                    if chunk.prompt_token_ids is not None and chunk.prompt_token_ids != body["prompt"]:
                        raise self.error(f"{label}: the server's prompt ids differ from the ids sent")
                    finish_reason = chunk.finish_reason or finish_reason
                    generated += len(chunk.token_ids)
                    if chunk.token_ids:
                        yield chunk.token_ids
        except httpx.TransportError as exc:
            what = transport_problem(exc)
            raise self.error(what if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) else
                             f"{label}: the stream was cut short after {generated} tokens ({what})") from None
        problem = finish_problem(finish_reason, generated, body["max_tokens"], body["min_tokens"])
        if problem is not None:
            raise self.error(f"{label}: {problem}")

    def _chunk(self, payload: str, label: str) -> Chunk | None:
        try:
            chunk = parse_event(payload)
        except ValueError as exc:
            raise self.error(f"{label}: {exc}") from None
        if chunk is not None and chunk.token_ids is None:
            raise self.error("does not return token ids (vLLM's return_token_ids, vLLM >= 0.10.2): the harness "
                             "needs the model's own ids, not text")
        return chunk


def transport_problem(exc: httpx.TransportError) -> str:
    """What a transport failure was, in words (httpx's messages can be empty)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect ({detail})"
    return detail
