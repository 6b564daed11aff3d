"""One OpenAI-compatible completions server, as the OpenAI backend talks to it (aiohttp, streaming).

Prompts go out as token ids and answers come back as the model's own token ids (vLLM's
`return_token_ids`), so nothing is tokenized or detokenized on either side. Every failure becomes
an ApiServerError whose message is one line naming the server and what happened. Nothing a server
sends is trusted: every shape and every token id is checked before use, redirects are refused,
and the API key is blotted out of any server text before it reaches a message.

aiohttp rather than httpx: httpcore's connection pool scans every connection for every request
(measured: 8.9 million checks for 360 streamed answers), which a thousand answers in flight per
server cannot afford; aiohttp's C parser also costs a third of httpx's CPU per streamed chunk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from harness.backends.protocol import EOS_ID, DescribedFailure
from harness.tokenizer import bundled_tokenizer_model, load_sentencepiece

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
MAX_SHOWN_CHARS = 80  # of a value a server sent that the harness cannot use
# vLLM's first chunk also carries the prompt's ids (2,048 at most, ~15 kB); a longer line is not
# an answer, and reading on would only fill memory.
MAX_EVENT_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 20  # of a model list or an error answer
REDACTED = f"<{API_KEY_ENV}>"
KEY_END_CHARS = 8  # the shortest start or end of the key that is blotted out where it stands alone
# Tokens per streamed chunk after the first (vLLM sends the first and the last chunk at once, so
# neither TTFT nor the completion time moves). Fewer chunks cut the cost of the HTTP hop on both
# sides about eightfold; a stop sequence is seen at most 7 tokens late, which the server then
# generates for nothing before the closed stream aborts the request.
STREAM_INTERVAL = 8


class ApiServerError(DescribedFailure):
    """A server failed; str() is one line naming it."""

    def __init__(self, server: str, what: str) -> None:
        super().__init__(f"server {server}: {one_line(what)}")
        self.server = server


def one_line(text: str) -> str:
    # Redacted before it is cut: a cut through the key would leave part of it.
    flat = " ".join(redact(str(text)).split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[:MAX_DETAIL_CHARS] + "..."


def redact(text: str) -> str:
    """text without the API key: a server may echo the Authorization header (in a 401's text,
    say), and the harness copies server text into its messages and logs."""
    key = os.environ.get(API_KEY_ENV)
    if not key:
        return text
    for form in (key, json.dumps(key)[1:-1]):  # as sent, and as a JSON string escapes it
        text = text.replace(form, REDACTED)
    # Its ends too, longest first: aiohttp quotes at most 100 bytes of a line it cannot parse,
    # which can cut an echoed key short.
    for length in range(len(key) - 1, KEY_END_CHARS - 1, -1):
        text = text.replace(key[:length], REDACTED).replace(key[-length:], REDACTED)
    return text


def shown(value: Any) -> str:
    """What a server sent, for a one-line message: raw bytes as a quoted string, a parsed value as
    JSON (so that "2" and 2 differ), redacted, then cut to MAX_SHOWN_CHARS."""
    if isinstance(value, bytes | bytearray):
        text = redact(bytes(value).decode(errors="replace"))
        return repr(text[:MAX_SHOWN_CHARS]) + ("..." if len(text) > MAX_SHOWN_CHARS else "")
    text = redact(json.dumps(value))
    return text[:MAX_SHOWN_CHARS] + ("..." if len(text) > MAX_SHOWN_CHARS else "")


@functools.cache
def vocabulary_size() -> int:
    """How many token ids Mixtral has: its tokenizer's pieces (the tokenizer answers are decoded with)."""
    return load_sentencepiece(bundled_tokenizer_model()).get_piece_size()


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


def parse_event(payload: bytes, vocab_size: int) -> Chunk | None:
    """One `data:` payload of the stream; None for an event without a choice (usage). Raises
    ValueError with the server's message for an error event, and saying what the server sent for
    a payload that is not a chunk of one choice or ids that are not token ids of the vocabulary."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise ValueError(f"sent a stream event that is not JSON: {shown(payload)}") from None
    if not isinstance(event, dict):
        raise ValueError(f"sent a stream event that is not an object: {shown(payload)}")
    if "error" in event or event.get("object") == "error":
        raise ValueError(f"reported an error in the stream: {error_text(event)}")
    choices = event.get("choices")
    if choices is None or choices == []:
        return None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise ValueError(f"sent choices that are not a list of one object: {shown(choices)}")
    choice = choices[0]
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise ValueError(f"sent a finish_reason that is not a string: {shown(finish_reason)}")
    token_ids, prompt_ids = choice.get("token_ids"), choice.get("prompt_token_ids")
    return Chunk(None if token_ids is None else checked_ids("token_ids", token_ids, vocab_size), finish_reason,
                 None if prompt_ids is None else checked_ids("prompt_token_ids", prompt_ids, vocab_size))


def checked_ids(field: str, ids: Any, vocab_size: int) -> list[int]:
    """ids, if they are a list of token ids in [0, vocab_size); else ValueError saying which is not."""
    if not isinstance(ids, list):
        raise ValueError(f"sent {field} that are not a list: {shown(ids)}")
    for position, token in enumerate(ids):
        if type(token) is not int or not 0 <= token < vocab_size:  # not isinstance: a bool is an int
            raise ValueError(f"sent {field}[{position}] = {shown(token)}, not a token id (an integer in "
                             f"[0, {vocab_size}))")
    return ids


def error_text(body: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}} or vLLM's {"message"})."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)


def http_error(status: int, content: bytes, location: str | None = None) -> str:
    """An answer other than 200 in words: status, the server's message, where a redirect points."""
    try:
        detail = error_text(json.loads(content))
    except (ValueError, RecursionError):
        detail = content.decode(errors="replace")
    detail = redact(detail)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "(non-standard status)"
    hint = f" (set {API_KEY_ENV})" if status in (401, 403) else ""
    if 300 <= status < 400:
        # Every answer would come from a server the start-up check never saw.
        hint = (f" to {shown(location) if location is not None else 'no Location'}: redirects are not followed "
                f"(give --api-server the URL that answers)")
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


class ApiServer:
    """One server's API base. Its coroutines take the caller's session (a session belongs to one event loop)."""

    def __init__(self, url: str, vocab_size: int | None = None) -> None:
        self.url = normalize_url(url)
        self.vocab_size = vocab_size if vocab_size is not None else vocabulary_size()
        self.max_model_len: int | None = None  # from the model list, where the server says (vLLM does)

    def __repr__(self) -> str:
        return f"ApiServer({self.url})"

    def error(self, what: str) -> ApiServerError:
        return ApiServerError(self.url, what)

    async def served_models(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """GET /models: the entries of the models the server serves, each with a string id."""
        try:
            async with await self._send(session, "GET", "/models") as response:
                if response.status != 200:
                    raise await self._refusal(response, "GET /models")
                content, whole = await read_bounded(response.content, MAX_BODY_BYTES)
        except aiohttp.ClientError as exc:
            raise self.error(f"GET /models: {connection_problem(exc)}") from None
        if not whole:
            raise self.error(f"GET /models: the model list is longer than {MAX_BODY_BYTES} bytes: {shown(content)}")
        return model_entries(content, self.error)

    async def stream_ids(self, session: aiohttp.ClientSession, body: dict[str, Any],
                         label: str) -> AsyncIterator[list[int]]:
        """Stream one completion: yields each chunk's new token ids (never empty; ids of the
        vocabulary, body["max_tokens"] at most in all). Ends only on a whole answer; anything else
        raises ApiServerError. Closing the generator early closes the connection, which makes vLLM
        abort the request."""
        generated = 0
        finish_reason = None
        try:
            response = await self._send(session, "POST", "/completions", body)
        except aiohttp.ClientError as exc:
            raise self.error(f"{label}: {connection_problem(exc)}") from None
        whole = False
        try:
            if response.status != 200:
                raise await self._refusal(response, label)
            if response.content_type != "text/event-stream":
                raise self.error(f"{label}: answered {response.content_type} instead of a stream "
                                 f"(text/event-stream): the harness streams every answer")
            while line := await response.content.readuntil(b"\n", max_size=MAX_EVENT_BYTES):
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
                if generated > body["max_tokens"]:
                    raise self.error(f"{label}: sent {generated} tokens so far, more than max_tokens "
                                     f"{body['max_tokens']}")
                if chunk.token_ids:
                    yield chunk.token_ids
            whole = True
        except HttpProcessingError:  # aiohttp's LineTooLong, whose text spans lines and quotes the server
            raise self.error(f"{label}: sent a stream line longer than {MAX_EVENT_BYTES} bytes after {generated} "
                             f"tokens") from None
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
        """The response once its headers are in, retrying only what failed before any answer.
        Redirects are answers (an error), not followed."""
        for attempt in range(SEND_RETRIES + 1):
            try:
                return await session.request(method, f"{self.url}{path}", json=body, allow_redirects=False)
            except aiohttp.ClientConnectionError:  # refused, reset, closed before the response began
                if attempt == SEND_RETRIES:
                    raise
                await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    async def _refusal(self, response: aiohttp.ClientResponse, what: str) -> ApiServerError:
        """The error for an answer other than 200 (a bounded part of its body is read)."""
        content, _ = await read_bounded(response.content, MAX_BODY_BYTES)
        return self.error(f"{what}: {http_error(response.status, content, response.headers.get('Location'))}")

    def _chunk(self, payload: bytes, label: str) -> Chunk | None:
        try:
            chunk = parse_event(payload, self.vocab_size)
        except ValueError as exc:
            raise self.error(f"{label}: {exc}") from None
        if chunk is not None and chunk.token_ids is None:
            raise self.error("does not return token ids (vLLM's return_token_ids, vLLM >= 0.10.2): the harness "
                             "needs the model's own ids, not text")
        return chunk


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of a body, and whether that was all of it: a server's answer may be
    endless."""
    parts: list[bytes] = []
    size = 0
    while size <= limit and (part := await content.read(limit + 1 - size)):
        parts.append(part)
        size += len(part)
    data = b"".join(parts)
    return data[:limit], size <= limit


def model_entries(content: bytes, error: Callable[[str], ApiServerError]) -> list[dict[str, Any]]:
    """The entries of an OpenAI model list ({"data": [{"id": ...}, ...]}); each id a string, each
    max_model_len (where given) a positive integer."""
    try:
        listing = json.loads(content)
    except (ValueError, RecursionError):
        listing = None
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                for e in entries):
        raise error(f"GET /models: the answer is not an OpenAI model list (data: [{{id: ...}}]): {shown(content)}")
    for entry in entries:
        length = entry.get("max_model_len")
        if length is not None and (type(length) is not int or length < 1):
            raise error(f"GET /models: model {shown(entry['id'])} has max_model_len {shown(length)}, not a "
                        f"positive integer")
    return entries


def connection_problem(exc: BaseException) -> str:
    """What a connection failure was, in words (aiohttp's messages can be empty)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({detail})"
    return detail
