"""HFInflightBackend (transformers' continuous batching) against static-batch generate, on real models
(the demo model in float32 on the CPU, and tiny random Mixtrals where a rule needs forcing)."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch
from transformers import MixtralForCausalLM

from dataset import MixtralDataset
from harness.backends.hf_inflight import HFInflightBackend
from harness.backends.hf_static import HFBackend, load_model
from harness.backends.protocol import EOS_ID, MBXP_STOP_IDS, GenerationRequest
from harness.postprocess import postprocess_output, strip_trailing
from tests.run_helpers import random_tiny_mixtral

QUICK_S = 30  # an abort or a failing engine must end a call well within this


@pytest.fixture(scope="module")
def requests_(demo_assets) -> list[GenerationRequest]:
    dataset = MixtralDataset(demo_assets.dataset_path)
    return [dataset.request(i, query_id=i + 1) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def static_answers(demo_assets, requests_) -> list[list[int]]:
    backend = HFBackend.load(str(demo_assets.model_dir), "float32", "cpu", batch_size=8)
    return [postprocess_output(a, r.stop_ids) for a, r in zip(backend.generate(requests_), requests_, strict=True)]


@pytest.fixture(scope="module", params=["sdpa", "paged|eager"])
def inflight(request, demo_assets):
    backend = HFInflightBackend.load(str(demo_assets.model_dir), "float32", "cpu", attention=request.param)
    yield backend
    backend.close()


def test_answers_equal_static_generate_on_every_demo_row(inflight, requests_, static_answers):
    caller = threading.get_ident()
    firsts: dict[int, list[int]] = {}
    done: dict[int, list[int]] = {}
    threads = set()

    def on_first_token(request, token):
        firsts.setdefault(request.qsl_index, []).append(token)
        threads.add(threading.get_ident())

    def on_done(request, ids):
        assert request.qsl_index in firsts, "first token before the answer"
        assert request.qsl_index not in done, "answered once"
        done[request.qsl_index] = ids
        threads.add(threading.get_ident())

    answers = inflight.generate(requests_, on_first_token, on_done)
    assert [postprocess_output(a, r.stop_ids) for a, r in zip(answers, requests_, strict=True)] == static_answers
    assert done == {r.qsl_index: a for r, a in zip(requests_, answers, strict=True)}
    assert firsts == {r.qsl_index: [a[0]] for r, a in zip(requests_, answers, strict=True)}
    assert threads == {caller}, "handlers run on the calling thread"
    stopped = [a for a, r in zip(answers, requests_, strict=True) if r.stop_ids and a[-4:] == list(MBXP_STOP_IDS)]
    assert stopped, "the demo model emits the MBXP stop sequence"


def test_warm_up_leaves_the_engine_answering_as_before(inflight, requests_, static_answers):
    inflight.warm_up()
    inflight.warm_up()
    answers = inflight.generate(requests_[:4])
    assert [postprocess_output(a, r.stop_ids) for a, r in zip(answers, requests_, strict=False)] == static_answers[:4]


def test_static_warm_up_counts_no_padding_and_changes_no_answer(demo_assets, requests_, static_answers):
    backend = HFBackend.load(str(demo_assets.model_dir), "float32", "cpu", batch_size=8)
    backend.warm_up()
    assert backend.padding.prompt_slots == 0, "the warm-up is not a benchmark batch"
    answers = backend.generate(requests_[:8])
    assert [postprocess_output(a, r.stop_ids) for a, r in zip(answers, requests_, strict=False)] == static_answers[:8]


def test_serve_answers_queries_as_they_arrive(inflight, requests_, static_answers):
    arrivals: queue.Queue = queue.Queue()
    events: list[tuple[str, int]] = []
    answers: dict[int, list[int]] = {}
    serving_thread = []

    def serve():
        serving_thread.append(threading.get_ident())
        inflight.serve(arrivals, lambda r, token: events.append(("first", r.qsl_index)),
                       lambda r, ids: (events.append(("done", r.qsl_index)), answers.__setitem__(r.qsl_index, ids)))

    server = threading.Thread(target=serve)
    server.start()
    for request in requests_:
        arrivals.put(request)
        time.sleep(0.02)
    arrivals.put(None)
    server.join(timeout=300)
    assert not server.is_alive(), "serve returns once it took None and finished what was in flight"
    assert [postprocess_output(answers[r.qsl_index], r.stop_ids) for r in requests_] == static_answers
    for request in requests_:
        mine = [kind for kind, index in events if index == request.qsl_index]
        assert mine == ["first", "done"], f"sample {request.qsl_index}: {mine}"


def test_min_new_tokens_holds_for_each_request(tmp_path):
    # Over a 4-token vocabulary EOS is often the best first or second token; min_new_tokens=2 forbids it
    # there, row by row, as static generate does.
    model_dir = random_tiny_mixtral(tmp_path / "vocab4", vocab_size=4)
    generator = torch.Generator().manual_seed(1)
    requests = [GenerationRequest(i, torch.randint(0, 4, (int(torch.randint(1, 30, (1,), generator=generator)),),
                                                   generator=generator).tolist()) for i in range(60)]
    model = MixtralForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        first_choice = [int(model(torch.tensor([r.input_ids])).logits[0, -1].argmax()) for r in requests]
    assert first_choice.count(EOS_ID) >= 5, "the rule is exercised"

    # The rule acts on the first ids only: short answers keep the test quick.
    static = HFBackend(model, batch_size=1, max_new_tokens=16).generate(requests)
    backend = HFInflightBackend(load_model(model_dir, "float32", "cpu", "sdpa"), max_new_tokens=16)
    try:
        answers = backend.generate(requests)
    finally:
        backend.close()
    assert [strip_trailing(a) for a in answers] == [strip_trailing(a) for a in static]
    assert all(len(strip_trailing(a)) >= 2 for a in answers)


def test_abort_returns_promptly_without_answers(tmp_path):
    # A random model never says EOS: unless aborted, each request runs to 1,024 new tokens.
    backend = HFInflightBackend.load(random_tiny_mixtral(tmp_path / "random", vocab_size=32000), "float32", "cpu")
    first_token = threading.Event()
    done = []
    call = threading.Thread(target=backend.generate, args=(
        [GenerationRequest(i, [1, 5 + i, 7]) for i in range(4)], lambda r, t: first_token.set(),
        lambda r, ids: done.append(r)))
    call.start()
    assert first_token.wait(QUICK_S)
    backend.abort()
    call.join(QUICK_S)  # unaborted, four answers of 1,024 tokens would take far longer; only a hang reaches this
    assert not call.is_alive()
    assert done == [], "nothing unfinished is handed over"
    backend.close()
    assert not backend.manager.is_running(), "close() stops the engine thread"


def test_a_failing_engine_raises_instead_of_hanging(tmp_path):
    # A real failure inside the engine: a prompt id beyond this model's 1,000-row embedding.
    backend = HFInflightBackend.load(random_tiny_mixtral(tmp_path / "small", vocab_size=1000), "float32", "cpu")
    outcome: list[BaseException] = []

    def call():
        try:
            backend.generate([GenerationRequest(0, [1, 5000, 7])])
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(QUICK_S)
    assert not thread.is_alive()
    assert outcome and "index out of range" in str(outcome[0])
    backend.close()
