"""HuggingFace in-flight batching backend: transformers' continuous batching behind the protocol.

transformers 5.x runs a paged-attention engine loop on a thread of its own
(`model.init_continuous_batching()`): new requests join the running batch at its next step and
finished ones leave at once, so a query's first token no longer waits for the longest answer of a
static batch. generate() and serve() consume the engine's outputs on the calling thread, where
every handler runs (loadgen needs a sample's first token and its completion on one thread); the
loop is streaming.py's, shared with vllm_engine.py.

Answers equal static-batch generate's: greedy, EOS ends a row, at most 1,024 new tokens (the
engine's own rules) and at least 2, which the engine would drop (static generate's
MinNewTokensLengthLogitsProcessor cannot tell the rows of an engine step apart) and this module
restores with a per-request processor. MBXP rows stream their ids, the stop ids are matched as
they arrive and the request is cancelled at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from transformers import LogitsProcessorList
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)

from harness.backends.hf_static import greedy_config, load_model, resolve_device
from harness.backends.protocol import (
    EOS_ID,
    IDLE_POLL_S,
    MAX_NEW_TOKENS,
    MAX_SEQUENCE_TOKENS,
    MIN_NEW_TOKENS,
    WARM_UP_NEW_TOKENS,
    WARM_UP_PROMPT,
    GenerationRequest,
)
from harness.backends.streaming import EngineOutput, StreamingBackend

log = logging.getLogger(__name__)

ENGINE_STOP_TIMEOUT_S = 30.0
ARRIVAL_POLL_S = 0.005  # serve(): longest wait for engine output before new arrivals are added
REFUSED = "transformers' continuous batching engine refused a request: it is stopping"
# On the CPU transformers would size the KV cache from 90 % of the machine's RAM, and its attention
# masks grow with (batch tokens x cache tokens): keep both to what a CPU run can use.
CPU_MAX_BATCH_TOKENS = 2048
CPU_DEFAULT_MAX_SEQUENCES = 32
PAGE_SIZE = 256  # tokens per KV-cache block (transformers' default)


class MinNewTokensProcessor(ContinuousBatchingLogitsProcessor):
    """EOS is forbidden while a request has fewer than MIN_NEW_TOKENS generated ids, per request
    of the engine step (static generate's processor applies one prompt length to the whole batch).
    Its argument row holds 1 for the requests whose next id is still too early."""

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        # Synchronous batching: generated_len() is the position of the id this step samples.
        return torch.tensor([int(r.state.generated_len() < MIN_NEW_TOKENS) for r in requests_with_new_token],
                            dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        too_early = tensor_arg[: scores.size(0)].bool()  # (rows,)
        scores[:, EOS_ID].masked_fill_(too_early, -math.inf)  # scores: (rows, vocab)
        return scores


class _ProcessorList(ContinuousBatchingLogitsProcessorList):
    """transformers reserves an argument row only for the processors it converts itself; each of
    ours needs one."""

    def __init__(self, processors: Sequence[ContinuousBatchingLogitsProcessor]) -> None:
        super().__init__(LogitsProcessorList(processors))
        self.tensors_required = len(processors)


class _WithoutTraceback(logging.Filter):
    """The engine logs a failure with its traceback; this module raises it again, and the run
    reports it in one line: the engine's line is kept, its traceback wall is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


_WITHOUT_TRACEBACK = _WithoutTraceback()


def continuous_batching_config(model: torch.nn.Module, max_sequences: int | None) -> ContinuousBatchingConfig:
    """Synchronous steps (the min-new-tokens rule needs each request's exact length when a step is
    prepared). On a GPU transformers sizes the cache from free memory; on the CPU it holds
    `max_sequences` requests of the longest length."""
    options: dict = {"use_async_batching": False, "page_size": PAGE_SIZE, "max_requests_per_batch": max_sequences}
    if model.device.type == "cpu":
        sequences = max_sequences or CPU_DEFAULT_MAX_SEQUENCES
        options.update(max_requests_per_batch=sequences, max_batch_tokens=CPU_MAX_BATCH_TOKENS,
                       num_blocks=sequences * math.ceil(MAX_SEQUENCE_TOKENS / PAGE_SIZE))
    return ContinuousBatchingConfig(**options)


class HFInflightBackend(StreamingBackend):
    """GenerationBackend over transformers' continuous batching (see protocol.py). One engine per
    model; threads sharing the backend take turns (one consuming loop at a time)."""

    cumulative_outputs = True  # an output carries every id generated so far
    generate_poll_s = IDLE_POLL_S  # a wait for outputs wakes now and then to notice abort()
    serve_poll_s = ARRIVAL_POLL_S

    def __init__(self, model: torch.nn.Module, max_sequences: int | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        """model: a causal LM loaded with an attention implementation the engine can page ("sdpa",
        "paged|eager" or a flash one; see load()). max_sequences: most requests in one engine step (None: as
        many as the cache holds on a GPU, CPU_DEFAULT_MAX_SEQUENCES on the CPU)."""
        devices = sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()})
        if len(devices) > 1:  # the engine allocates its whole KV cache on one device
            raise ValueError(f"in-flight batching needs the model on one device, not spread over {devices}: "
                             "use --device cuda:N, or --batching static")
        # Its INFO lines (thread start and stop) would follow the harness's logging level.
        engine_logger = logging.getLogger("ContinuousBatchingLogger")
        engine_logger.setLevel(logging.WARNING)
        engine_logger.addFilter(_WITHOUT_TRACEBACK)
        super().__init__()
        # min_new_tokens stays unset: MinNewTokensProcessor applies it per request.
        generation_config = greedy_config(max_new_tokens, min_new_tokens=None)
        self.max_new_tokens = max_new_tokens
        self.manager = model.init_continuous_batching(
            generation_config=generation_config,
            continuous_batching_config=continuous_batching_config(model, max_sequences))
        self.manager.logit_processor = _ProcessorList([MinNewTokensProcessor()])
        self.manager.start()

    @classmethod
    def load(cls, model_path: str, dtype: str = "float32", device: str = "cpu",
             max_sequences: int | None = None, attention: str = "sdpa") -> HFInflightBackend:
        return cls(load_model(model_path, dtype, resolve_device(device), attention), max_sequences)

    def warm_up(self) -> None:
        with self._loop:
            self._add_request(WARM_UP_PROMPT, "warm-up", WARM_UP_NEW_TOKENS, streaming=False)
            while True:
                output = self.manager.get_result(request_id="warm-up", timeout=IDLE_POLL_S)
                if output is None:
                    self._check_engine()
                elif output.is_finished():
                    break
            if output.error is not None:
                raise RuntimeError(output.error)

    def close(self) -> None:
        """Stop the engine's thread at once (it would keep the process alive), dropping whatever
        it still holds."""
        self.manager.stop(block=True, timeout=ENGINE_STOP_TIMEOUT_S, hard_stop=True)
        self.manager.destroy()

    # --- the engine's part of the streaming loop ---------------------------------------------
    def _submit(self, request_id: str, request: GenerationRequest, streaming: bool) -> None:
        self._add_request(request.input_ids, request_id, self.max_new_tokens, streaming)

    def _add_request(self, input_ids: Sequence[int], request_id: str, max_new_tokens: int,
                     streaming: bool) -> None:
        # Plain ints: the dataset holds numpy int32 arrays.
        accepted = self.manager.add_request([int(t) for t in input_ids], request_id=request_id,
                                            max_new_tokens=max_new_tokens, streaming=streaming)
        if accepted is None:
            raise RuntimeError(REFUSED)

    def _outputs(self, timeout: float | None) -> Iterator[EngineOutput]:
        output = self.manager.get_result(timeout=timeout)
        if output is None:
            self._check_engine()
        while output is not None:
            state = self._in_flight.get(output.request_id)
            if state is not None and output.error is not None:
                raise RuntimeError(f"continuous batching failed on sample {state.request.qsl_index}: "
                                   f"{output.error}")
            # generated_tokens: every id so far, in a list of this output's own.
            yield EngineOutput(output.request_id, output.generated_tokens, output.is_finished())
            output = self.manager.get_result(timeout=0)

    def _cancel(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.manager.cancel_request(request_id)

    def _check_engine(self) -> None:
        if not self.manager.is_running():
            fatal = self.manager.background_thread_status.fatal_error
            raise RuntimeError(f"transformers' continuous batching engine stopped ({fatal or 'no error recorded'}) "
                               f"with {len(self._in_flight)} requests unanswered")
