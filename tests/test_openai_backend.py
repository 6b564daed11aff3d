"""The OpenAI backend's parts that need no server (URLs, flags, the request, stream events,
finish checks, error lines, model choice, routing), and its defences against servers that
misbehave, with fake servers (tests/fake_openai_servers.py): in-process, and main.py end to end.
Against a real server: test_openai_server.py."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.backends.openai_api import (
    STARTUP_TIMEOUT_ENV,
    Router,
    build_openai_backend,
    check_api_flags,
    choose_model,
    least_busy,
    startup_timeout_s,
)
from harness.backends.openai_client import (
    API_KEY_ENV,
    MAX_DETAIL_CHARS,
    MAX_EVENT_BYTES,
    ApiServer,
    ApiServerError,
    Chunk,
    completion_body,
    finish_problem,
    http_error,
    normalize_url,
    parse_event,
    redact,
    shown,
    vocabulary_size,
)
from harness.backends.protocol import EOS_ID, MAX_NEW_TOKENS, MIN_NEW_TOKENS, GenerationRequest
from tests.fake_openai_servers import (
    API_KEY,
    FakeServer,
    after_the_check,
    answer_events,
    good_answer,
    model_list,
    never_answers,
    raw,
    silent_server,
    streamed,
)
from tests.run_helpers import accuracy_entries, run_main
from tools.synth_dataset import synth_frame

VOCAB = 32000  # Mixtral's; the backend reads it from the tokenizer
HANG_S = 300  # only catches a hang: every run here ends in seconds
SHORT_TIMEOUT_S = 0.5  # for servers that never answer at all: the outcome cannot depend on speed


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


def test_api_flags_are_checked_before_anything_starts():
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
    assert parse_event(b'{"choices":[{"token_ids":[5,6],"finish_reason":null,"prompt_token_ids":[1]}]}', VOCAB) == \
        Chunk([5, 6], None, [1])
    assert parse_event(b'{"choices":[{"text":"x","finish_reason":"stop"}]}', VOCAB) == Chunk(None, "stop", None)
    assert parse_event(b'{"choices":[],"usage":{"completion_tokens":3}}', VOCAB) is None
    with pytest.raises(ValueError, match="boom"):
        parse_event(b'{"error":{"message":"boom","code":500}}', VOCAB)
    with pytest.raises(ValueError, match="not JSON"):
        parse_event(b"{truncated", VOCAB)


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
    assert str(ApiServerError("http://h/v1", "a\nb")) == "server http://h/v1: a b"


def test_the_model_is_the_one_named_or_the_only_one_served():
    assert choose_model("s", ["demo"], None) == "demo"
    assert choose_model("s", ["a", "b"], "b") == "b"
    with pytest.raises(ApiServerError, match="does not serve model 'x'.*it serves 'demo'"):
        choose_model("s", ["demo"], "x")
    with pytest.raises(ApiServerError, match="serves 2 models"):
        choose_model("s", ["a", "b"], None)


def test_least_busy_server_wins_and_ties_rotate():
    assert least_busy([3, 1, 2], [0, 1, 2]) == 1
    assert least_busy([1, 1], [5, 2]) == 1  # picked longest ago


def test_router_spreads_requests_and_bounds_each_server():
    api_servers = [ApiServer("http://a:1"), ApiServer("http://b:1")]

    async def scenario():
        sent = Counter()
        router = Router(api_servers, concurrency=2, sent=sent)
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


# --- what a server streams is checked --------------------------------------------------------


def test_the_vocabulary_is_the_tokenizers():
    assert vocabulary_size() == VOCAB
    assert ApiServer("http://a:1").vocab_size == VOCAB


@pytest.mark.parametrize(("token", "seen"), [
    (32000, "32000"), (-1, "-1"), ("2", '"2"'), (2.0, "2.0"), (True, "true"), (None, "null"), ([5], "[5]"),
])
def test_token_ids_are_integers_of_the_vocabulary(token, seen):
    event = json.dumps({"choices": [{"token_ids": [7, token], "finish_reason": None}]}).encode()
    with pytest.raises(ValueError, match=rf"^sent token_ids\[1\] = {seen.replace('[', '.').replace(']', '.')}, "
                                         rf"not a token id \(an integer in \[0, 32000\)\)$"):
        parse_event(event, VOCAB)
    assert parse_event(b'{"choices":[{"token_ids":[0,31999]}]}', VOCAB) == Chunk([0, 31999])


@pytest.mark.parametrize(("event", "problem"), [
    (b'{"choices":{"0":{"token_ids":[5]}}}', 'sent choices that are not a list of one object: {"0": {"token_ids"'),
    (b'{"choices":[1]}', "sent choices that are not a list of one object: [1]"),
    (b'{"choices":[{"token_ids":[5]},{"token_ids":[6]}]}', "sent choices that are not a list of one object"),
    (b'{"choices":[{"token_ids":"4152"}]}', 'sent token_ids that are not a list: "4152"'),
    (b'{"choices":[{"token_ids":[5],"prompt_token_ids":7}]}', "sent prompt_token_ids that are not a list: 7"),
    (b'{"choices":[{"token_ids":[5],"finish_reason":[1]}]}', "sent a finish_reason that is not a string: [1]"),
    (b"[5, 6]", "sent a stream event that is not an object: '[5, 6]'"),
    (b"[" * 100_000, "sent a stream event that is not JSON: '[[[["),
    (b"\xff\xfe", "sent a stream event that is not JSON"),
])
def test_stream_events_of_another_shape_say_what_was_sent(event, problem):
    with pytest.raises(ValueError) as raised:
        parse_event(event, VOCAB)
    assert str(raised.value).startswith(problem) and len(str(raised.value)) < 200


def test_what_a_server_sent_is_shown_cut_short():
    assert shown(b"x" * 500) == repr("x" * 80) + "..."
    assert shown(list(range(100))).endswith("...") and len(shown(list(range(100)))) == 83


# --- the API key never reaches a message -----------------------------------------------------


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY


def test_the_key_is_blotted_out_of_server_text(api_key):
    echoed = json.dumps({"error": {"message": f"bad header Authorization: Bearer {api_key}"}}).encode()
    line = http_error(401, echoed)
    assert api_key not in line and f"Bearer <{API_KEY_ENV}>" in line
    assert api_key not in shown(f"{api_key}".encode()) and api_key not in shown({"echo": api_key})
    # A key cut short by whoever quoted it (aiohttp quotes 100 bytes of a line it cannot parse).
    assert redact(f"b'Authorization: Bearer {api_key[:12]}...'") == f"b'Authorization: Bearer <{API_KEY_ENV}>...'"
    assert redact(f"...{api_key[-9:]} is not valid") == f"...<{API_KEY_ENV}> is not valid"
    assert redact(api_key[:7]) == api_key[:7]  # shorter ends stay: they would blot out common words
    # Cut after the redaction, not before: a cut through the key would print its first part.
    for start in range(MAX_DETAIL_CHARS - len(api_key), MAX_DETAIL_CHARS + 1):
        message = str(ApiServerError("http://h/v1", "x" * start + api_key))
        assert api_key[:8] not in message, start


def test_a_redirect_says_where_it_points():
    line = http_error(307, b"", "http://elsewhere:9/v1/models")
    assert line.startswith('HTTP 307 Temporary Redirect to "http://elsewhere:9/v1/models": redirects are not followed')


# --- fake servers, in-process ----------------------------------------------------------------


def refusal(server_url: str, timeout_s: float = HANG_S) -> str:
    """The one line build_openai_backend refuses the server with."""
    with pytest.raises(ApiServerError) as raised:
        build_openai_backend([server_url], timeout_s=timeout_s)
    message = str(raised.value)
    assert message.startswith(f"server {server_url}/v1: ") and "\n" not in message
    return message


@pytest.mark.parametrize(("ids", "problem"), [
    ([32000, 5], "token_ids[0] = 32000, not a token id"),
    ([5, -1], "token_ids[1] = -1, not a token id"),
    (["2", 5], 'token_ids[0] = "2", not a token id'),
    ("4152", 'token_ids that are not a list: "4152"'),
    ([4.7, 5], "token_ids[0] = 4.7, not a token id"),
    ([True, 5], "token_ids[0] = true, not a token id"),
    (list(range(3, 2003)), "8 tokens so far, more than max_tokens 2"),
])
def test_a_server_sending_what_are_not_token_ids_is_refused_at_start(api_key, ids, problem):
    with FakeServer(streamed(lambda body: answer_events(ids, "length"))) as server:
        assert f"start-up check: sent {problem}" in refusal(server.url)


@pytest.mark.parametrize(("events", "problem"), [
    ([{"choices": {"0": {"token_ids": [5, 6]}}}], 'sent choices that are not a list of one object: {"0": '),
    ([{"choices": [1]}], "sent choices that are not a list of one object: [1]"),
    ([b"data: " + b"7" * (MAX_EVENT_BYTES // 4)] * 200, f"sent a stream line longer than {MAX_EVENT_BYTES} bytes"),
])
def test_a_stream_of_another_shape_is_refused_at_start(api_key, events, problem):
    """The long line is 50 MB sent without an end: the harness stops reading after 1 MiB."""
    with FakeServer(streamed(lambda body: events)) as server:
        assert problem in refusal(server.url)


@pytest.mark.parametrize(("listing", "problem"), [
    (b'{"data": {"id": "demo"}}', "GET /models: the answer is not an OpenAI model list"),
    (b'{"data": [{"id": 5}]}', "GET /models: the answer is not an OpenAI model list"),
    (b'{"data": [{"id": "demo", "max_model_len": true}]}', 'model "demo" has max_model_len true, not a positive'),
    (b"[" * 100_000, "GET /models: the answer is not an OpenAI model list (data: [{id: ...}]): '[[[["),
    (b" " * (2 << 20), "GET /models: the model list is longer than 1048576 bytes"),
])
def test_a_model_list_of_another_shape_is_refused(api_key, listing, problem):
    with FakeServer(models=raw(listing, content_type="application/json")) as server:
        assert problem in refusal(server.url)


def test_a_server_that_never_answers_the_model_list_is_refused_in_time(api_key):
    with silent_server() as url:
        assert refusal(url, SHORT_TIMEOUT_S).endswith(f"GET /models: no answer within {SHORT_TIMEOUT_S:g} s (the "
                                                      f"start-up limit, set by {STARTUP_TIMEOUT_ENV})")


def test_a_server_that_never_answers_the_check_is_refused_in_time(api_key):
    with FakeServer(never_answers) as server:
        assert f"start-up check: no answer within {SHORT_TIMEOUT_S:g} s" in refusal(server.url, SHORT_TIMEOUT_S)


def test_the_start_up_limit_is_60_s_or_the_environments(monkeypatch):
    monkeypatch.delenv(STARTUP_TIMEOUT_ENV, raising=False)
    assert startup_timeout_s() == 60.0
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "2.5")
    assert startup_timeout_s() == 2.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(STARTUP_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=rf"^{STARTUP_TIMEOUT_ENV}='{bad}': not a number of seconds above 0$"):
            startup_timeout_s()


@pytest.mark.parametrize("route", ["models", "completions"])
def test_a_redirect_is_refused_and_not_followed(api_key, route):
    with FakeServer() as elsewhere:
        moved = raw(b"moved", status=307, headers={"Location": f"{elsewhere.url}/v1/{route}"})
        with FakeServer(**{route: moved}) as server:
            problem = refusal(server.url)
        assert f'HTTP 307 Temporary Redirect to "{elsewhere.url}/v1/{route}": redirects are not followed' in problem
        assert elsewhere.requests == []


def test_more_than_max_tokens_fails_the_answer(api_key):
    too_many = after_the_check(lambda body: answer_events(list(range(3, 2003)), "length"))
    with FakeServer(streamed(too_many)) as server:
        backend = build_openai_backend([server.url], timeout_s=HANG_S)
        with pytest.raises(ApiServerError, match=rf"sample 4: sent 1032 tokens so far, more than max_tokens "
                                                rf"{MAX_NEW_TOKENS}$"):
            backend.generate([GenerationRequest(4, [1, 5])])


@pytest.mark.parametrize("loop", ["generate", "serve"])
def test_abort_hands_over_nothing_already_read(api_key, loop):
    """abort() from the first-token handler: the server sent the whole answer and the stream's end
    in one write, already read when the cancellation can reach the loop; none of it is handed over."""
    (event,) = answer_events([5, 6, 7, EOS_ID], "stop", per_chunk=4)
    in_one_write = f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()
    whole = after_the_check(lambda body: [in_one_write])
    with FakeServer(streamed(whole)) as server:
        backend = build_openai_backend([server.url], timeout_s=HANG_S)
        first, done = [], []

        def abort_at_the_first_token(request, token):
            first.append(token)
            backend.abort()

        handed_over = lambda request, ids: done.append(ids)  # noqa: E731
        if loop == "generate":
            answers = backend.generate([GenerationRequest(4, [1, 5])], abort_at_the_first_token, handed_over)
            assert answers == [[]]
        else:
            arrivals: queue.Queue = queue.Queue()
            arrivals.put(GenerationRequest(4, [1, 5]))  # no None: only abort() ends this loop
            backend.serve(arrivals, abort_at_the_first_token, handed_over)
    assert first == [5]
    assert done == []


def test_the_stream_is_closed_right_after_the_stop_ids(api_key):
    """So that the server can drop the request. The server sends the answer up to and past the
    stop ids, then waits for the connection to close before it would send the rest: no reader,
    however fast or slow, gets the rest, and only a close ends the wait before the hang timeout."""
    closed = threading.Event()

    async def until_closed(server, request, body):
        from aiohttp import web

        if body["max_tokens"] == MIN_NEW_TOKENS:
            return await streamed(good_answer)(server, request, body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in answer_events([5, 6, 7, 8, 9], None, per_chunk=1):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        deadline = time.monotonic() + HANG_S
        while request.transport is not None and not request.transport.is_closing():
            if time.monotonic() > deadline:  # never closed: the rest, as a server would send it
                for event in answer_events([10, EOS_ID], "stop"):
                    await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await response.write(b"data: [DONE]\n\n")
                return response
            await asyncio.sleep(0.01)
        closed.set()
        raise ConnectionResetError

    with FakeServer(until_closed) as server:
        backend = build_openai_backend([server.url], timeout_s=HANG_S)
        (answer,) = backend.generate([GenerationRequest(4, [1, 5], (7, 8))])
        assert answer == [5, 6, 7, 8]
        assert closed.wait(HANG_S), "the harness kept the stream open after the stop ids"


def test_a_model_named_after_the_key_is_refused(api_key):
    with FakeServer(models=model_list({"id": f"model-{api_key}"})) as server:
        problem = refusal(server.url)
    assert "serves a model whose name holds the API key" in problem and api_key not in problem


# --- fake servers, main.py end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six synthetic samples: the fake servers answer anything."""
    path = tmp_path_factory.mktemp("dataset") / "synth.pkl"
    synth_frame(6, seed=0).to_pickle(path)
    return path


def run_against(url: str, dataset: Path, out: Path) -> subprocess.CompletedProcess:
    """An Offline accuracy run of main.py against one server, as a user starts it."""
    return run_main("--backend", "openai", "--api-server", url, "--dataset-path", str(dataset), "--scenario",
                    "Offline", "--accuracy", "--output-log-dir", str(out), cwd=out, timeout=HANG_S)


def last_line(result: subprocess.CompletedProcess, exit_code: int, server_url: str) -> str:
    """The run's last line of stderr, which must name the server; the exit code checked."""
    assert result.returncode == exit_code, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"server {server_url}/v1: " in last, last
    return last


def assert_refused_at_start(result: subprocess.CompletedProcess, server_url: str, *fragments: str) -> None:
    """Exit 2 with one line naming the server and what it did; nothing else on stderr but logs."""
    last = last_line(result, 2, server_url)
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), last
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [last]


def test_main_refuses_a_server_sending_a_string_for_a_token_id(api_key, dataset, tmp_path):
    with FakeServer(streamed(lambda body: answer_events(["2"], "stop"))) as server:
        result = run_against(server.url, dataset, tmp_path)
    assert_refused_at_start(result, server.url, 'start-up check: sent token_ids[0] = "2", not a token id')


def test_main_fails_the_run_on_bad_token_ids_mid_run(api_key, dataset, tmp_path):
    """The start-up check passes; every sample's answer holds the id 32000. The failure is logged
    in one line naming the server, with no traceback (it would add nothing)."""
    with FakeServer(streamed(after_the_check(lambda body: answer_events([5, 32000, EOS_ID], "stop")))) as server:
        result = run_against(server.url, dataset, tmp_path)
    last = last_line(result, 1, server.url)
    assert last.startswith("error: the run failed: ") and "sent token_ids[1] = 32000, not a token id" in last, last
    assert "Traceback" not in result.stderr
    assert sorted(entry["qsl_idx"] for entry in accuracy_entries(tmp_path)) == list(range(6))


def test_main_refuses_a_50_mb_stream_line(api_key, dataset, tmp_path):
    endless_line = [b"data: " + b"7" * (1 << 20)] * 50
    with FakeServer(streamed(lambda body: endless_line)) as server:
        result = run_against(server.url, dataset, tmp_path)
    assert_refused_at_start(result, server.url, f"sent a stream line longer than {MAX_EVENT_BYTES} bytes")


def test_main_ends_when_a_server_never_answers(api_key, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, str(SHORT_TIMEOUT_S))
    with silent_server() as url:
        result = run_against(url, dataset, tmp_path)
    assert_refused_at_start(result, url, f"GET /models: no answer within {SHORT_TIMEOUT_S:g} s")


def test_main_does_not_follow_a_redirect(api_key, dataset, tmp_path):
    with FakeServer() as elsewhere:
        moved = raw(b"", status=307, headers={"Location": f"{elsewhere.url}/v1/models"})
        with FakeServer(models=moved) as server:
            result = run_against(server.url, dataset, tmp_path)
    assert_refused_at_start(result, server.url, "HTTP 307 Temporary Redirect", f"{elsewhere.url}/v1/models",
                            "redirects are not followed")
    assert elsewhere.requests == []


async def echo_authorization(server: FakeServer, request, body):
    from aiohttp import web

    return web.Response(status=401, text=f"Unauthorized. Your Authorization: {request.headers['Authorization']}")


def echo_in_the_stream(body):
    """An error event quoting the request's key back (a server echoing what it got)."""
    return [{"error": {"message": f"rejected a request with Authorization: Bearer {API_KEY}", "code": 500}}]


@pytest.mark.parametrize(("server_kwargs", "exit_code"), [
    ({"models": echo_authorization}, 2),
    ({"completions": echo_authorization}, 2),
    ({"completions": streamed(after_the_check(echo_in_the_stream))}, 1),
])
def test_main_never_prints_the_api_key(api_key, dataset, tmp_path, server_kwargs, exit_code):
    with FakeServer(**server_kwargs) as server:
        result = run_against(server.url, dataset, tmp_path)
    assert f"Bearer <{API_KEY_ENV}>" in last_line(result, exit_code, server.url)  # echoed, blotted out
    assert api_key not in result.stdout + result.stderr
    written = [path for path in tmp_path.rglob("*") if path.is_file()]  # logs, journal (none at start-up)
    assert not [path for path in written if api_key in path.read_text(errors="replace")]
    assert written or exit_code == 2
