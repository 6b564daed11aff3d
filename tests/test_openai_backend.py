"""The endpoint backend's parts that need no server: URLs, flags, the request, stream events,
finish checks, error lines, model choice, routing. Against a real server: test_openai_server.py."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from harness.backend import EOS_ID
from harness.endpoint import (
    Chunk,
    Endpoint,
    EndpointError,
    completion_body,
    finish_problem,
    http_error,
    normalize_url,
    parse_event,
)
from harness.openai_backend import Router, check_api_flags, choose_model, least_busy


@pytest.mark.parametrize(("url", "base"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://host:8000/v1/", "http://host:8000/v1"),
    ("https://gateway.example/serving/mixtral", "https://gateway.example/serving/mixtral/v1"),
])
def test_server_urls_become_api_bases(url, base):
    assert normalize_url(url) == base


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", "http://host:99999"])
def test_bad_server_urls_name_the_flag(url):
    with pytest.raises(ValueError, match="--api-server"):
        normalize_url(url)


def test_endpoint_flags_are_checked_before_anything_starts():
    check_api_flags("openai", ["http://a:1", "http://b:1"], None)
    with pytest.raises(ValueError, match="needs --api-server"):
        check_api_flags("openai", None, None)
    with pytest.raises(ValueError, match="same server"):
        check_api_flags("openai", ["http://a:1", "http://a:1/v1"], None)
    with pytest.raises(ValueError, match="are for --backend openai"):
        check_api_flags("vllm", ["http://a:1"], None)


def test_the_request_is_greedy_token_ids_in_and_out():
    body = completion_body("m", [1, 1, 28705], max_tokens=1024, min_tokens=2)
    assert body["prompt"] == [1, 1, 28705] and all(type(t) is int for t in body["prompt"])
    assert (body["temperature"], body["max_tokens"], body["min_tokens"]) == (0.0, 1024, 2)
    assert body["stop_token_ids"] == [EOS_ID] and body["ignore_eos"] is False
    assert body["stream"] is True and body["return_token_ids"] is True
    assert (body["repetition_penalty"], body["presence_penalty"], body["frequency_penalty"]) == (1.0, 0.0, 0.0)


def test_stream_events_parse_to_token_ids():
    assert parse_event('{"choices":[{"token_ids":[5,6],"finish_reason":null,"prompt_token_ids":[1]}]}') == \
        Chunk([5, 6], None, [1])
    assert parse_event('{"choices":[{"text":"x","finish_reason":"stop"}]}') == Chunk(None, "stop", None)
    assert parse_event('{"choices":[],"usage":{"completion_tokens":3}}') is None
    with pytest.raises(ValueError, match="boom"):
        parse_event('{"error":{"message":"boom","code":500}}')
    with pytest.raises(ValueError, match="not JSON"):
        parse_event("{truncated")


def test_only_whole_answers_pass():
    assert finish_problem("stop", 7, 1024, 2) is None
    assert finish_problem("length", 1024, 1024, 2) is None
    assert "cut short" in finish_problem(None, 7, 1024, 2)
    assert "max_model_len" in finish_problem("length", 500, 1024, 2)
    assert "min_tokens" in finish_problem("stop", 1, 1024, 2)
    assert "'abort'" in finish_problem("abort", 3, 1024, 2)


def test_http_errors_read_in_one_line():
    assert http_error(404, b'{"error":{"message":"The model `x` does not exist."}}') == \
        "HTTP 404 Not Found: The model `x` does not exist."
    assert "OPENAI_API_KEY" in http_error(401, b'{"error":"Unauthorized"}')
    assert str(EndpointError("http://h/v1", "a\nb")) == "server http://h/v1: a b"


def test_the_model_is_the_one_named_or_the_only_one_served():
    assert choose_model("s", ["demo"], None) == "demo"
    assert choose_model("s", ["a", "b"], "b") == "b"
    with pytest.raises(EndpointError, match="does not serve model 'x'.*it serves 'demo'"):
        choose_model("s", ["demo"], "x")
    with pytest.raises(EndpointError, match="serves 2 models"):
        choose_model("s", ["a", "b"], None)


def test_least_busy_server_wins_and_ties_rotate():
    assert least_busy([3, 1, 2], [0, 1, 2]) == 1
    assert least_busy([1, 1], [5, 2]) == 1  # picked longest ago


def test_router_spreads_requests_and_bounds_each_server():
    endpoints = [Endpoint("http://a:1"), Endpoint("http://b:1")]

    async def scenario():
        sent = Counter()
        router = Router(endpoints, concurrency=2, sent=sent)
        picks = [await router.acquire() for _ in range(4)]
        blocked = asyncio.ensure_future(router.acquire())
        await asyncio.sleep(0.05)
        assert not blocked.done()  # both servers hold 2: a fifth request waits
        router.release(picks[1])
        assert await asyncio.wait_for(blocked, 1) == picks[1]
        return picks, sent

    picks, sent = asyncio.run(scenario())
    assert picks == [0, 1, 0, 1]  # equal load alternates
    assert sent == {"http://a:1/v1": 2, "http://b:1/v1": 3}
