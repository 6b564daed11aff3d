"""vLLM generation backend: the GenerationBackend protocol on vLLM's engine step loop.

The engine gets token ids only (the dataset's tok_input is the reference tokenization; vLLM never
tokenizes text here), greedy sampling with min 2 / max 1024 new tokens and EOS as a stop token.
The step loop is streaming.py's, shared with hf_inflight.py: vLLM has no token-sequence stop, so
the MBXP stop ids are matched there and the request is aborted as soon as its generated ids
contain them. Every handler runs on the thread that drives the loop, which keeps a sample's
FirstTokenComplete and QuerySamplesComplete on one thread as loadgen requires.

vLLM is imported lazily: the harness and its HF backend work without it installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from harness.backends.protocol import (
    EOS_ID,
    MAX_NEW_TOKENS,
    MAX_SEQUENCE_TOKENS,
    MIN_NEW_TOKENS,
    WARM_UP_NEW_TOKENS,
    WARM_UP_PROMPT,
    GenerationRequest,
    context_overflow,
)
from harness.backends.streaming import EngineOutput, StreamingBackend

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = MAX_SEQUENCE_TOKENS
# vLLM's CPU build pins each worker's OpenMP threads to the cores this names ("0|1": worker 0 on
# core 0, worker 1 on core 1); its "auto" default needs a NUMA node per worker.
CPU_THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


class EngineStartError(RuntimeError):
    """vLLM's engine did not start; the message is one line (vLLM's own log holds the cause)."""


class VllmBackend(StreamingBackend):
    """One vLLM engine. generate() and serve() drive its step loop on the calling thread; threads
    sharing one engine take turns (one loop at a time)."""

    cumulative_outputs = False  # RequestOutputKind.DELTA: each output holds only the step's new ids

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
        engine_env: Mapping[str, str] | None = None,
    ) -> None:
        """distributed_executor_backend: None (vLLM picks: processes on one node) or "ray"
        (tensor/pipeline parallel across the nodes of a running Ray cluster). device_ids: the GPUs
        of this engine (indices into CUDA_VISIBLE_DEVICES), for data-parallel replicas.
        multiprocess: run vLLM's engine core in its own process (vLLM's default; it overlaps
        scheduling with the model and isolates the device); False keeps it in this process.
        engine_options: any further vllm.EngineArgs fields, passed through unchanged.
        engine_env: environment variables the engine's processes start with (this process's own
        are restored once they have started)."""
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.executor import Executor

        super().__init__()
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
        try:
            with environment(engine_env or {}):
                self._engine: LLMEngine = LLMEngine(
                    vllm_config=config,
                    executor_class=Executor.get_class(config),
                    log_stats=False,
                    multiprocess_mode=multiprocess,
                )
        except RuntimeError as exc:  # vLLM reports a failed engine process this way, its cause logged above
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineStartError(f"vLLM's engine did not start: {first_line}") from None
        self.max_in_flight = config.scheduler_config.max_num_seqs  # sequences one engine step can batch
        self._params = _greedy_params()
        logger.info("vLLM engine ready: %s, %s, tp=%d, devices=%s", model_path, dtype, tensor_parallel_size,
                    device_ids if device_ids is not None else "default")

    def warm_up(self) -> None:
        from vllm.inputs import TokensPrompt

        params = self._params.clone()
        params.max_tokens = WARM_UP_NEW_TOKENS
        with self._loop:
            self._engine.add_request("warm-up", TokensPrompt(prompt_token_ids=list(WARM_UP_PROMPT)), params)
            while self._engine.has_unfinished_requests():
                self._engine.step()

    def close(self) -> None:
        """Stop the engine's worker processes."""
        self._engine.engine_core.shutdown()

    # --- the engine's part of the streaming loop ---------------------------------------------
    def _submit(self, request_id: str, request: GenerationRequest, streaming: bool) -> None:
        from vllm.inputs import TokensPrompt

        # Plain ints: the dataset holds numpy int32 arrays, which the engine's IPC cannot encode.
        prompt = TokensPrompt(prompt_token_ids=[int(t) for t in request.input_ids])
        self._engine.add_request(request_id, prompt, self._params)

    def _outputs(self, timeout: float | None) -> Iterator[EngineOutput]:
        """One engine step (it takes as long as it takes: `timeout` is not needed)."""
        for output in self._engine.step():
            yield EngineOutput(output.request_id, output.outputs[0].token_ids, output.finished)

    def _cancel(self, request_ids: list[str]) -> None:
        self._engine.abort_request(request_ids)

    def _check_request(self, request: GenerationRequest) -> None:
        if (problem := context_overflow(request, self.max_model_len)) is not None:
            raise ValueError(f"{problem}; raise max_model_len to at least {len(request.input_ids) + MAX_NEW_TOKENS}")

    def _arrival_capacity(self) -> int:
        """The engine's batch: replicas share one queue, and what one engine cannot batch now is
        left to the others."""
        return self.max_in_flight


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


def check_replicas(replicas: int, distributed_executor_backend: str | None) -> None:
    """The replica rules, before anything starts; ValueError naming the flag."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    if replicas > 1 and distributed_executor_backend == "ray":
        raise ValueError("--replicas > 1 places engines on local GPUs; with Ray (--distributed-executor-backend ray) "
                         "use one replica (tensor parallel across nodes, see docs/vllm.md) or run one harness per node")


def cpu_thread_binds(cpus: Sequence[int], workers_per_engine: int, engines: int) -> list[str]:
    """Each engine's CPU_THREADS_BIND_ENV value: the cores split into one group per worker of
    every engine, in order; with fewer cores than workers, workers take turns on them."""
    workers = workers_per_engine * engines
    if len(cpus) < workers:
        groups = [[cpus[w % len(cpus)]] for w in range(workers)]
    else:
        size, extra = divmod(len(cpus), workers)
        starts = [w * size + min(w, extra) for w in range(workers + 1)]
        groups = [list(cpus[starts[w]:starts[w + 1]]) for w in range(workers)]
    per_engine = [groups[e * workers_per_engine:(e + 1) * workers_per_engine] for e in range(engines)]
    return ["|".join(",".join(map(str, group)) for group in engine_groups) for engine_groups in per_engine]


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards (processes started meanwhile keep them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_vllm_backends(
    model_path: str,
    dtype: str = "bfloat16",
    tensor_parallel_size: int = 1,
    replicas: int = 1,
    engine_envs: Sequence[Mapping[str, str]] | None = None,
    **options: Any,
) -> list[VllmBackend]:
    """Data-parallel replicas: `replicas` engines of g = tp x pp GPUs each, replica r on GPUs
    [r*g, (r+1)*g) of the visible ones, each engine core in its own process (vLLM binds a process
    to one device set). The SUT feeds them from one queue, one serving thread per engine.
    engine_envs: each replica's engine_env. options: VllmBackend keywords. When one engine fails
    to start, those already started are closed."""
    check_replicas(replicas, options.get("distributed_executor_backend"))
    if replicas > 1 and options.get("multiprocess") is False:
        raise ValueError("replicas > 1 need multiprocess=True: each engine core must be its own process")
    gpus = tensor_parallel_size * options.get("pipeline_parallel_size", 1)
    backends: list[VllmBackend] = []
    try:
        for r in range(replicas):
            devices = {"device_ids": range(r * gpus, (r + 1) * gpus)} if replicas > 1 else {}
            env = engine_envs[r] if engine_envs is not None else None
            backends.append(VllmBackend(model_path, dtype, tensor_parallel_size, engine_env=env, **devices, **options))
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends
