"""vLLM generation backend: the GenerationBackend protocol on vLLM's engine step loop.

The engine gets token ids only (the dataset's tok_input is the reference tokenization; vLLM never
tokenizes text here), greedy sampling with min 2 / max 1024 new tokens and EOS as a stop token.
vLLM has no token-sequence stop, so the MBXP stop ids are matched in our own step loop, and the
request is aborted as soon as its generated ids contain them. Every handler runs on the thread
that drives the loop, which keeps a sample's FirstTokenComplete and QuerySamplesComplete on one
thread as loadgen requires.

vLLM is imported lazily: the harness and its HF backend work without it installed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.backends.protocol import (
    EOS_ID,
    IDLE_POLL_S,
    MAX_NEW_TOKENS,
    MAX_PROMPT_TOKENS,
    MIN_NEW_TOKENS,
    WARM_UP_NEW_TOKENS,
    WARM_UP_PROMPT,
    DoneHandler,
    FirstTokenHandler,
    GenerationRequest,
)
from harness.postprocess import find_stop_end

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = MAX_PROMPT_TOKENS + MAX_NEW_TOKENS


@dataclass
class _InFlight:
    request: GenerationRequest
    ids: list[int] = field(default_factory=list)


class VllmBackend:
    """One vLLM engine. generate() and serve() drive its step loop on the calling thread; threads
    sharing one engine take turns (one loop at a time)."""

    continuous_batching = True  # the engine schedules: give it everything at once

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        tensor_parallel_size: int = 1,
        *,
        pipeline_parallel_size: int = 1,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        max_num_seqs: int | None = None,
        gpu_memory_utilization: float = 0.92,
        distributed_executor_backend: str | None = None,
        device_ids: Sequence[int] | None = None,
        enforce_eager: bool = False,
        multiprocess: bool = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        """distributed_executor_backend: None (vLLM picks: processes on one node) or "ray"
        (tensor/pipeline parallel across the nodes of a running Ray cluster). device_ids: the GPUs
        of this engine (indices into CUDA_VISIBLE_DEVICES), for data-parallel replicas.
        multiprocess: run vLLM's engine core in its own process (vLLM's default; it overlaps
        scheduling with the model and isolates the device); False keeps it in this process.
        engine_options: any further vllm.EngineArgs fields, passed through unchanged."""
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.executor import Executor

        self.max_model_len = max_model_len
        args = EngineArgs(
            model=model_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            distributed_executor_backend=distributed_executor_backend,
            device_ids=list(device_ids) if device_ids is not None else None,
            enforce_eager=enforce_eager,
            # Prompts arrive as ids and answers leave as ids: no tokenizer is needed, and the
            # checkpoint's LlamaTokenizer is rebuilt wrongly by transformers 5.x anyway.
            skip_tokenizer_init=True,
            # Ignore generation_config.json: sampling must be exactly the reference's greedy.
            generation_config="vllm",
            disable_log_stats=True,
            **dict(engine_options or {}),
        )
        config = args.create_engine_config()
        self._engine: LLMEngine = LLMEngine(
            vllm_config=config,
            executor_class=Executor.get_class(config),
            log_stats=False,
            multiprocess_mode=multiprocess,
        )
        self.max_in_flight = config.scheduler_config.max_num_seqs  # sequences one engine step can batch
        self._params = _greedy_params()
        self._in_flight: dict[str, _InFlight] = {}
        self._loop = threading.Lock()
        self._aborted = threading.Event()
        self._ids = itertools.count()
        logger.info("vLLM engine ready: %s, %s, tp=%d, devices=%s", model_path, dtype, tensor_parallel_size,
                    device_ids if device_ids is not None else "default")

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        """All requests go to the engine at once; it batches them continuously."""
        for request in requests:
            self._check_fits(request)
        answers: list[list[int]] = [[] for _ in requests]
        with self._loop, self._abort_on_exit():
            order = {self._add(request): position for position, request in enumerate(requests)}
            while self._in_flight and not self._aborted.is_set():
                for request_id, state in self._step(on_first_token):
                    answers[order[request_id]] = state.ids
                    if on_done is not None:
                        on_done(state.request, state.ids)
        return answers

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        """Take arrivals between engine steps until None, then finish what is in flight.
        Several serving threads (replicas) may share one queue: put one None per thread.
        Anything after the None this loop took is left in the queue."""
        closing = False
        with self._loop, self._abort_on_exit():
            while (not closing or self._in_flight) and not self._aborted.is_set():
                if not closing:
                    closing = self._take_arrivals(requests, wait=not self._in_flight)
                if self._in_flight:
                    for _, state in self._step(on_first_token):
                        on_done(state.request, state.ids)

    def warm_up(self) -> None:
        from vllm.inputs import TokensPrompt

        params = self._params.clone()
        params.max_tokens = WARM_UP_NEW_TOKENS
        with self._loop:
            self._engine.add_request("warm-up", TokensPrompt(prompt_token_ids=list(WARM_UP_PROMPT)), params)
            while self._engine.has_unfinished_requests():
                self._engine.step()

    def abort(self) -> None:
        self._aborted.set()

    def close(self) -> None:
        """Stop the engine's worker processes."""
        self._engine.engine_core.shutdown()

    @contextlib.contextmanager
    def _abort_on_exit(self) -> Iterator[None]:
        """If a loop ends early (abort(), a handler raised, the engine died), drop its requests from
        the engine, so a later call starts clean; the caller fails the samples it did not complete."""
        try:
            yield
        finally:
            if self._in_flight:
                with contextlib.suppress(Exception):  # the engine itself may be what failed
                    self._engine.abort_request(list(self._in_flight))
                self._in_flight.clear()

    def _check_fits(self, request: GenerationRequest) -> None:
        needed = len(request.input_ids) + MAX_NEW_TOKENS
        if needed > self.max_model_len:
            raise ValueError(
                f"sample {request.qsl_index}: {len(request.input_ids)} input + {MAX_NEW_TOKENS} new tokens exceed "
                f"max_model_len {self.max_model_len}; raise max_model_len to at least {needed}")

    def _take_arrivals(self, requests: queue.Queue[GenerationRequest | None], wait: bool) -> bool:
        """Add the waiting requests up to the engine's batch capacity (block for the first one when
        idle, so an idle loop costs nothing); True once None was taken. The cap leaves the rest of
        a shared queue to the other replicas."""
        block = wait
        while len(self._in_flight) < self.max_in_flight:
            try:
                # An idle wait wakes now and then to notice abort().
                item = requests.get(block=block, timeout=IDLE_POLL_S if block else None)
            except queue.Empty:
                return False
            if item is None:
                return True
            self._check_fits(item)
            self._add(item)
            block = False
        return False

    def _add(self, request: GenerationRequest) -> str:
        from vllm.inputs import TokensPrompt

        request_id = f"{request.qsl_index}-{next(self._ids)}"
        # Plain ints: the dataset holds numpy int32 arrays, which the engine's IPC cannot encode.
        prompt = TokensPrompt(prompt_token_ids=[int(t) for t in request.input_ids])
        self._engine.add_request(request_id, prompt, self._params)
        self._in_flight[request_id] = _InFlight(request)
        return request_id

    def _step(self, on_first_token: FirstTokenHandler | None) -> list[tuple[str, _InFlight]]:
        """One engine step: stream first tokens, apply the stop ids, return the finished requests."""
        finished = []
        for output in self._engine.step():
            state = self._in_flight.get(output.request_id)
            if state is None:  # a request we already stopped and aborted
                continue
            new_ids = output.outputs[0].token_ids
            if not new_ids and not output.finished:
                continue
            if not state.ids and new_ids and on_first_token is not None:
                on_first_token(state.request, new_ids[0])
            seen = len(state.ids)
            state.ids.extend(new_ids)
            stop_end = find_stop_end(state.ids, state.request.stop_ids, start=seen)
            if stop_end is not None:
                # The reference keeps the stop ids and generates nothing useful after them.
                del state.ids[stop_end:]
                if not output.finished:
                    self._engine.abort_request([output.request_id])
            if output.finished or stop_end is not None:
                del self._in_flight[output.request_id]
                finished.append((output.request_id, state))
        return finished


def _greedy_params() -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        temperature=0.0,
        min_tokens=MIN_NEW_TOKENS,
        max_tokens=MAX_NEW_TOKENS,
        # Without a tokenizer vLLM knows no EOS id; min_tokens also holds back stop_token_ids.
        stop_token_ids=[EOS_ID],
        ignore_eos=False,
        detokenize=False,
        # Only the new ids of each step: the loop keeps the answer itself (no O(n^2) copies).
        output_kind=RequestOutputKind.DELTA,
    )


def build_vllm_backends(
    model_path: str,
    dtype: str = "bfloat16",
    tensor_parallel_size: int = 1,
    replicas: int = 1,
    **options: Any,
) -> list[VllmBackend]:
    """Data-parallel replicas: `replicas` engines of g = tp x pp GPUs each, replica r on GPUs
    [r*g, (r+1)*g) of the visible ones, each engine core in its own process (vLLM binds a process
    to one device set). The SUT feeds them from one queue, one serving thread per engine.
    options: VllmBackend keywords."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    if replicas == 1:
        return [VllmBackend(model_path, dtype, tensor_parallel_size, **options)]
    if options.get("distributed_executor_backend") == "ray":
        raise ValueError("--replicas > 1 places engines on local GPUs; with Ray use one replica "
                         "(tensor parallel across nodes) or run one harness per node")
    if options.get("multiprocess") is False:
        raise ValueError("replicas > 1 need multiprocess=True: each engine core must be its own process")
    gpus = tensor_parallel_size * options.get("pipeline_parallel_size", 1)
    return [
        VllmBackend(model_path, dtype, tensor_parallel_size, device_ids=range(r * gpus, (r + 1) * gpus), **options)
        for r in range(replicas)
    ]
