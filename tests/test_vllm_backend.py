"""VllmBackend against a direct HF greedy generate on the demo model (float32, CPU).

One engine serves the whole module (its start takes ~25 s). Tests that need no engine run
without vLLM installed; the others skip.
"""

import os
import queue
import threading

import pytest
import torch
from transformers import MixtralForCausalLM, StoppingCriteria, StoppingCriteriaList

from dataset import MixtralDataset
from harness.backends.protocol import EOS_ID, MAX_NEW_TOKENS, MIN_NEW_TOKENS, GenerationRequest
from harness.backends.vllm_engine import build_vllm_backends
from harness.postprocess import cut_after_stop, find_stop_end, postprocess_output
from tests.serve_checks import LEFT_OVER, serve_in_two_waves

TIE_TOLERANCE = 1e-4  # logit gap under which two tokens are a tie that float rounding may break either way
STOP = (13, 13940, 28832, 13)


@pytest.fixture(scope="module")
def engine(demo_assets):
    pytest.importorskip("vllm")
    with pytest.MonkeyPatch.context() as env:
        # The engine core is a child process and reads these when it starts: keep its KV cache
        # (GiB) and threads small on a shared CI machine.
        env.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        env.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        (backend,) = build_vllm_backends(str(demo_assets.model_dir), "float32", replicas=1, enforce_eager=True)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def requests_(demo_assets):
    dataset = MixtralDataset(demo_assets.dataset_path)
    return [dataset.request(i) for i in range(len(dataset))]


@pytest.fixture(scope="module")
def hf_model(demo_assets):
    return MixtralForCausalLM.from_pretrained(str(demo_assets.model_dir), dtype=torch.float32).eval()


class _StopAfterIds(StoppingCriteria):
    """Stops the (single) row once its generated ids end with stop_ids, as the reference does."""

    def __init__(self, prompt_len, stop_ids):
        self.prompt_len, self.stop_ids = prompt_len, torch.tensor(stop_ids)

    def __call__(self, input_ids, scores, **kwargs):
        generated = input_ids[0, self.prompt_len:]
        n = len(self.stop_ids)
        done = len(generated) >= n and torch.equal(generated[-n:].cpu(), self.stop_ids)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def hf_greedy(model, request):
    """The reference generation of one row: unpadded, greedy, min 2 / max 1024 new tokens."""
    prompt = torch.tensor([[int(t) for t in request.input_ids]])
    criteria = StoppingCriteriaList([_StopAfterIds(prompt.shape[1], request.stop_ids)] if request.stop_ids else [])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, num_beams=1,
                         min_new_tokens=MIN_NEW_TOKENS, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=EOS_ID,
                         pad_token_id=EOS_ID, stopping_criteria=criteria)
    return out[0, prompt.shape[1]:].tolist()


@torch.inference_mode()
def divergence(model, request, hf_ids, vllm_ids):
    """First position where the processed answers differ, and HF's logit of its own token minus
    its logit of vLLM's token there (an answer that ended reads as EOS at that position)."""
    at = next((i for i, (a, b) in enumerate(zip(hf_ids, vllm_ids, strict=False)) if a != b),
              min(len(hf_ids), len(vllm_ids)))
    hf_token = hf_ids[at] if at < len(hf_ids) else EOS_ID
    vllm_token = vllm_ids[at] if at < len(vllm_ids) else EOS_ID
    context = torch.tensor([[int(t) for t in request.input_ids] + hf_ids[:at]])
    logits = model(context).logits[0, -1].float()
    return at, float(logits[hf_token] - logits[vllm_token])


@pytest.fixture(scope="module")
def vllm_answers(engine, requests_):
    return engine.generate(requests_)


def test_generate_equals_hf_greedy_except_for_ties(hf_model, requests_, vllm_answers):
    differences = []
    for request, vllm_raw in zip(requests_, vllm_answers, strict=True):
        hf = postprocess_output(hf_greedy(hf_model, request), request.stop_ids)
        ours = postprocess_output(vllm_raw, request.stop_ids)
        if hf != ours:
            at, gap = divergence(hf_model, request, hf, ours)
            differences.append((request.qsl_index, at, gap))
    report = "; ".join(f"row {row}: first difference at token {at}, HF logit gap {gap:.2e}"
                       for row, at, gap in differences)
    # A difference is only accepted where the two tokens were tied to within float rounding.
    assert all(abs(gap) < TIE_TOLERANCE for _, _, gap in differences), report


def test_mbxp_answers_end_with_the_stop_ids(requests_, vllm_answers):
    """An MBXP answer either ends at EOS or stops right after the stop ids, which it keeps."""
    stopped = 0
    for request, raw in zip(requests_, vllm_answers, strict=True):
        end = find_stop_end(raw, STOP)
        if request.stop_ids and end is not None:
            assert len(raw) == end and postprocess_output(raw, request.stop_ids)[-4:] == list(STOP)
            stopped += 1
    assert stopped, "no MBXP demo row reached its stop ids: the stop path went untested"


def test_generation_stops_at_the_first_stop_occurrence(engine, requests_, vllm_answers):
    """Model-independent: a 4-gram the row is known to produce, used as its stop ids."""
    row = max(range(len(requests_)), key=lambda i: len(vllm_answers[i]))
    free = vllm_answers[row]
    stop = tuple(free[3:7])
    (stopped,) = engine.generate([GenerationRequest(row, requests_[row].input_ids, stop)])
    assert stopped == cut_after_stop(free, stop)
    assert tuple(stopped[-4:]) == stop


def test_warm_up_leaves_the_engine_answering_as_before(engine, requests_, vllm_answers):
    engine.warm_up()
    assert not engine._engine.has_unfinished_requests()
    assert engine.generate(requests_[:4]) == vllm_answers[:4]


def test_serve_streams_first_tokens_on_the_completing_thread(engine, requests_):
    first, done, arrivals = serve_in_two_waves(engine, requests_)

    assert sorted(done) == sorted(first) == [r.qsl_index for r in requests_]
    for index, (ids, thread) in done.items():
        assert first[index] == (ids[0], thread)
        assert thread == threading.get_ident()
    assert arrivals.get_nowait() == LEFT_OVER


def test_serve_takes_no_more_requests_than_it_can_batch(engine, requests_, monkeypatch):
    """Replicas share one queue: an engine must leave what it cannot run to the others."""
    monkeypatch.setattr(engine, "max_in_flight", 2)
    arrivals: queue.Queue = queue.Queue()
    for request in requests_:
        arrivals.put(request)
    arrivals.put(None)
    done, in_flight = [], []

    def on_first(request, token):
        taken = len(requests_) + 1 - arrivals.qsize()
        in_flight.append(taken - len(done))

    engine.serve(arrivals, on_first, lambda r, ids: done.append(r.qsl_index))
    assert sorted(done) == [r.qsl_index for r in requests_]
    assert max(in_flight) <= 2


def test_generate_calls_handlers_in_stream_order(engine, requests_):
    events = []
    answers = engine.generate(requests_[:2], lambda r, t: events.append(("first", r.qsl_index, t)),
                              lambda r, ids: events.append(("done", r.qsl_index, ids)))
    for request, answer in zip(requests_[:2], answers, strict=True):
        assert ("first", request.qsl_index, answer[0]) in events and ("done", request.qsl_index, answer) in events
        assert events.index(("first", request.qsl_index, answer[0])) < events.index(("done", request.qsl_index, answer))


def test_threads_sharing_one_engine_take_turns(engine, requests_, vllm_answers):
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, engine.generate(requests_[k:k + 2])))
               for k in (0, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: vllm_answers[0:2], 2: vllm_answers[2:4]}


def test_a_failing_handler_leaves_the_engine_clean(engine, requests_, vllm_answers):
    def fail(request, token):
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        engine.generate(requests_[:2], on_first_token=fail)
    assert engine.generate(requests_[:1]) == vllm_answers[:1]


def test_too_long_prompt_names_max_model_len(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([GenerationRequest(0, [1] * engine.max_model_len)])



def test_replica_arguments_are_checked_before_any_engine_starts():
    with pytest.raises(ValueError, match="--replicas"):
        build_vllm_backends("unused", replicas=0)
    with pytest.raises(ValueError, match="Ray"):
        build_vllm_backends("unused", replicas=2, distributed_executor_backend="ray")
