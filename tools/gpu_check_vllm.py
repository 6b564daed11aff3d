"""tools/gpu_check.py's vLLM paths: VllmBackend in this process (one engine, tensor parallel 2,
two replicas), and the OpenAI backend against `vllm serve`, all on engines vLLM builds from a
config alone with random weights (load_format "dummy"), so no checkpoint is needed.

The engines live in other processes (vLLM's engine core, the server), so memory is read for the
whole device. Each path waits for the device memory the previous one held to be released.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import MixtralConfig

from harness.backends.protocol import (
    MAX_NEW_TOKENS,
    DoneHandler,
    FirstTokenHandler,
    GenerationBackend,
    GenerationRequest,
)
from tools.gpu_measure import path_summary, run_batches

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 120.0
FREE_SHARE_NEEDED = 0.9  # of the device's memory, before a vLLM engine (which takes 0.92 of it) starts
DTYPE = "bfloat16"


def write_config_folder(config: MixtralConfig, folder: Path) -> Path:
    """A checkpoint folder with config.json only: all that vLLM's dummy loader reads."""
    config = MixtralConfig.from_dict({**config.to_dict(), "architectures": ["MixtralForCausalLM"]})
    config.save_pretrained(folder)
    return folder


def device_used_gb(device: str) -> float | None:
    """Memory in use on the whole GPU (every process); None on the CPU."""
    if not device.startswith("cuda"):
        return None
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return (total - free) / 1e9


def make_room(device: str) -> None:
    """GPU: wait for the previous path's memory (a finished engine's processes release it a little
    after they are told to stop). CPU: the KV-cache size harness/run.py sets for vLLM's CPU build."""
    if not device.startswith("cuda"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # as harness/run.py sets for the CPU build
        return
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while time.monotonic() < deadline:
        free, total = torch.cuda.mem_get_info(torch.device(device))
        if free >= FREE_SHARE_NEEDED * total:
            return
        time.sleep(1)
    raise SystemExit(f"{device}: only {free / 1e9:.0f} of {total / 1e9:.0f} GB free after {RELEASE_TIMEOUT_S:.0f} s; "
                     f"another process holds the GPU")


class Replicas:
    """Data-parallel engines behind one generate(): the batch is dealt out in turn and every
    engine generates its share at once, on a thread of its own (as the SUT's serving threads do)."""

    def __init__(self, backends: Sequence[GenerationBackend]) -> None:
        self.backends = list(backends)

    def generate(self, requests: Sequence[GenerationRequest], on_first_token: FirstTokenHandler | None = None,
                 on_done: DoneHandler | None = None) -> list[list[int]]:
        count = len(self.backends)
        with ThreadPoolExecutor(count) as pool:
            shares = pool.map(lambda backend, share: backend.generate(share, on_first_token, on_done),
                              self.backends, [requests[r::count] for r in range(count)])
            answers: list[list[int]] = [[] for _ in requests]
            for replica, share in enumerate(shares):
                answers[replica::count] = share
        return answers


def vllm_engines_path(tensor_parallel_size: int, replicas: int) -> Callable[..., dict]:
    """The in-process vLLM path with `replicas` engines of `tensor_parallel_size` GPUs each
    (on the CPU: workers pinned to cores, as harness/backends/factory.py does). Skipped, with one
    line, where fewer GPUs are visible than it needs."""

    def path(args: argparse.Namespace, config: MixtralConfig, prompts: list[list[int]], budget_s: float) -> dict:
        from harness.backends.factory import cpu_engine_envs
        from harness.backends.vllm_engine import build_vllm_backends

        needed = tensor_parallel_size * replicas
        if args.device.startswith("cuda") and (visible := torch.cuda.device_count()) < needed:
            logger.warning("skipping tensor parallel %d x replicas %d: %d GPUs needed, %d visible",
                           tensor_parallel_size, replicas, needed, visible)
            return {"skipped_path": f"{needed} GPUs needed, {visible} visible", "runs": [], "skipped": []}
        make_room(args.device)
        envs = None if args.device.startswith("cuda") else cpu_engine_envs(tensor_parallel_size, replicas)
        with tempfile.TemporaryDirectory(prefix="gpu-check-vllm-") as folder:
            started = time.perf_counter()
            backends = build_vllm_backends(str(write_config_folder(config, Path(folder))), DTYPE, tensor_parallel_size,
                                           replicas, envs, enforce_eager=args.tiny,
                                           engine_options={"load_format": "dummy", "seed": args.seed})
            build_s = time.perf_counter() - started
            try:
                engines = backends[0] if replicas == 1 else Replicas(backends)
                return _measure(args, engines, prompts, build_s, budget_s,
                                tensor_parallel_size=tensor_parallel_size, replicas=replicas)
            finally:
                for backend in backends:
                    backend.close()

    return path


def openai_path(args: argparse.Namespace, config: MixtralConfig, prompts: list[list[int]], budget_s: float) -> dict:
    from harness.backends.openai_api import build_openai_backend
    from tools.vllm_server import running_vllm_server

    make_room(args.device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-openai-") as folder:
        model_dir = write_config_folder(config, Path(folder) / "model")
        started = time.perf_counter()
        flags = ["--load-format", "dummy", "--seed", str(args.seed), *(["--enforce-eager"] if args.tiny else [])]
        with running_vllm_server(model_dir, Path(folder) / "server.log", dtype=DTYPE, extra_args=flags) as server:
            backend = build_openai_backend([server.url])
            build_s = time.perf_counter() - started
            return _measure(args, backend, prompts, build_s, budget_s, server=server.url)


def _measure(args: argparse.Namespace, backend: Any, prompts: list[list[int]], build_s: float, budget_s: float,
             **extra: Any) -> dict:
    runs, skipped = run_batches(args.batch_sizes, lambda _: backend, prompts, time.perf_counter() + budget_s,
                                lambda: device_used_gb(args.device))
    return path_summary(build_s, runs, skipped, max_new_tokens=MAX_NEW_TOKENS, **extra)
