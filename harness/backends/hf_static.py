"""HuggingFace transformers generation backend: static batches, greedy, as the reference.

Batches are left-padded with EOS (attention mask 0 on pads). The MBXP stop sequence is a
stopping criterion evaluated on the device, so an Offline batch needs one copy to the CPU at the
end; Server batches also copy each step's ended rows, to report first tokens and hand over
finished answers without waiting for the rest of the batch.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from harness.backends.protocol import (
    BOS_ID,
    EOS_ID,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
    WARM_UP_NEW_TOKENS,
    WARM_UP_PROMPT,
    BackendStats,
    DoneHandler,
    FirstTokenHandler,
    GenerationRequest,
    PaddingStats,
)
from harness.backends.streaming import take_waiting

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """"auto" means the GPUs when CUDA is available, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


def load_model(model_path: str, dtype: str, device: str, attention: str | None = None) -> torch.nn.Module:
    """Load the checkpoint in `dtype`. "cuda" spreads the layers over every visible GPU
    (device_map="auto"); "cuda:N" puts the whole model on GPU N; "cpu" keeps it on the CPU.
    attention: an attn_implementation (None: transformers' default)."""
    device_map = "auto" if device == "cuda" else device
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=TORCH_DTYPES[dtype], device_map=device_map,
                                                 attn_implementation=attention)
    model.eval()
    return model


def greedy_config(max_new_tokens: int, min_new_tokens: int | None = MIN_NEW_TOKENS) -> GenerationConfig:
    """The reference's sampling: greedy, EOS ends a row and pads it. min_new_tokens=None for an
    engine that applies the minimum itself (hf_inflight.py)."""
    return GenerationConfig(do_sample=False, num_beams=1, min_new_tokens=min_new_tokens,
                            max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                            bos_token_id=BOS_ID)


def left_pad(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask, both (batch, longest prompt), padded on the left with EOS."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), EOS_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


class StopSequenceCriteria(StoppingCriteria):
    """Finishes a row once its generated ids end with that row's stop ids (rows without stop
    ids never match); generate then pads the row with EOS, as forcing EOS would."""

    def __init__(self, requests: Sequence[GenerationRequest], prompt_width: int, device: torch.device) -> None:
        self.prompt_width = prompt_width
        self.length = max((len(r.stop_ids) for r in requests), default=0)
        self.stop = torch.full((len(requests), self.length), -1, dtype=torch.long)
        for row, request in enumerate(requests):
            if request.stop_ids:
                self.stop[row, self.length - len(request.stop_ids):] = torch.as_tensor(request.stop_ids)
        self.stop = self.stop.to(device)
        self.has_stop = torch.as_tensor([bool(r.stop_ids) for r in requests], device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.length == 0 or input_ids.shape[1] - self.prompt_width < self.length:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tail = input_ids[:, -self.length:]
        return self.has_stop & ((tail == self.stop) | (self.stop == -1)).all(dim=1)


class StreamingCriteria(StoppingCriteria):
    """Server: reports each row's first id after the first step, and hands over each row as soon
    as it ends (EOS or its stop ids) instead of when the whole batch ends. Costs one small copy
    to the CPU per step; never stops anything itself."""

    def __init__(self, requests: Sequence[GenerationRequest], prompt_width: int, stop: StopSequenceCriteria,
                 on_first_token: FirstTokenHandler, on_done: DoneHandler | None) -> None:
        self.requests = requests
        self.prompt_width = prompt_width
        self.stop = stop
        self.on_first_token = on_first_token
        self.on_done = on_done
        self.handed_over = [False] * len(requests)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_width + 1:
            for request, token in zip(self.requests, input_ids[:, -1].tolist(), strict=True):
                self.on_first_token(request, token)
        if self.on_done is not None:
            ended = ((input_ids[:, -1] == EOS_ID) | self.stop(input_ids, scores)).tolist()
            for row, request in enumerate(self.requests):
                if ended[row] and not self.handed_over[row]:
                    self.handed_over[row] = True
                    self.on_done(request, input_ids[row, self.prompt_width:].tolist())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class AbortCriteria(StoppingCriteria):
    """Ends every row at the next step once abort() was called."""

    def __init__(self, aborted: threading.Event) -> None:
        self.aborted = aborted

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.aborted.is_set(), dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """GenerationBackend over transformers' generate (see harness/backends/protocol.py)."""

    continuous_batching = False

    def __init__(self, model: torch.nn.Module, batch_size: int = 1, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        """model: a loaded causal LM (see load()). max_new_tokens stays the reference's 1024 in
        every benchmark run; only measurement tools shorten it."""
        self.batch_size = batch_size
        self.model = model
        self.input_device = model.get_input_embeddings().weight.device
        self.generation_config = greedy_config(max_new_tokens)
        self.padding = PaddingStats()
        self._padding_lock = threading.Lock()
        self._aborted = threading.Event()

    @classmethod
    def load(cls, model_path: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 1) -> HFBackend:
        return cls(load_model(model_path, dtype, resolve_device(device)), batch_size)

    def abort(self) -> None:
        self._aborted.set()

    def stats(self) -> BackendStats:
        with self._padding_lock:
            return BackendStats(padding=copy.copy(self.padding))

    def close(self) -> None:
        """Nothing to release beyond the model, which goes with the object."""

    @torch.inference_mode()
    def warm_up(self) -> None:
        input_ids = torch.tensor([WARM_UP_PROMPT], device=self.input_device)
        self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            generation_config=self.generation_config, max_new_tokens=WARM_UP_NEW_TOKENS)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_first_token: FirstTokenHandler | None = None,
        on_done: DoneHandler | None = None,
    ) -> list[list[int]]:
        outputs: list[list[int]] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            answers, handed_over = self._generate_batch(batch, on_first_token, on_done)
            if self._aborted.is_set():  # the rows not handed over yet were cut short
                break
            if on_done is not None:
                for request, answer, done in zip(batch, answers, handed_over, strict=True):
                    if not done:
                        on_done(request, answer)
            outputs.extend(answers)
        return outputs

    def serve(
        self,
        requests: queue.Queue[GenerationRequest | None],
        on_first_token: FirstTokenHandler,
        on_done: DoneHandler,
    ) -> None:
        """Batch whatever queries are waiting (up to batch_size) into one generate; queries that
        arrive meanwhile wait for the next batch."""
        while not self._aborted.is_set():
            batch, closing = take_waiting(requests, wait=True, limit=self.batch_size)
            if batch:
                self.generate(batch, on_first_token, on_done)
            if closing:
                return

    @torch.inference_mode()
    def _generate_batch(
        self, batch: Sequence[GenerationRequest], on_first_token: FirstTokenHandler | None,
        on_done: DoneHandler | None,
    ) -> tuple[list[list[int]], list[bool]]:
        """Raw answers of one static batch, and which rows were already handed to on_done."""
        input_ids, attention_mask = left_pad([r.input_ids for r in batch])
        width = input_ids.shape[1]
        stop = StopSequenceCriteria(batch, width, self.input_device)
        criteria = StoppingCriteriaList([stop, AbortCriteria(self._aborted)])
        streaming = None
        if on_first_token is not None:
            streaming = StreamingCriteria(batch, width, stop, on_first_token, on_done)
            criteria.append(streaming)
        sequences = self.model.generate(
            input_ids=input_ids.to(self.input_device),
            attention_mask=attention_mask.to(self.input_device),
            generation_config=self.generation_config,
            stopping_criteria=criteria,
        )
        answers = sequences[:, width:].cpu().tolist()
        with self._padding_lock:
            self.padding.add([len(r.input_ids) for r in batch], width, answers)
        return answers, streaming.handed_over if streaming else [False] * len(batch)
