"""Throughput and memory of the harness's HF generation path at Mixtral-8x7B's real shapes.

For a lent GPU with no checkpoint and no internet: the model is built with random bf16 weights
straight on the device (shapes on the meta device, storage allocated on the GPU, filled there;
about 93 GB for the real shapes), then harness.hf_backend.HFBackend generates for synthetic
prompts of the real dataset's lengths at a few batch sizes. Prints a table and writes the same
figures as JSON. --tiny runs the same path with tiny shapes on the CPU.

    python -m tools.gpu_check --output-json gpu_check.json [--batch-sizes 1,8,32,64]
    python -m tools.gpu_check --tiny --output-json /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding

from harness import hf_backend
from harness.backend import GenerationRequest
from harness.postprocess import strip_trailing
from tools.synth_dataset import synth_frame

logger = logging.getLogger(__name__)

REAL_SHAPES = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128)
TINY_SHAPES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=64)
TINY_MAX_PROMPT_TOKENS = 64  # keeps the CPU run to seconds
WARMUP_NEW_TOKENS = 4
PROMPT_POOL_ROWS = 3000  # synthetic rows to draw prompts from (1,000 per dataset part)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (an end-to-end check anywhere)")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes (default 1,8,32,64; with --tiny 1,4)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="new tokens per request (default 128; with --tiny 8); the harness uses 1024, "
                             "tokens/s per step does not depend on the cap")
    parser.add_argument("--time-budget-s", type=float, default=480.0,
                        help="stop starting runs (and cut a run short) past this many seconds from start")
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


def make_backend(model: torch.nn.Module, batch_size: int, new_tokens: int) -> hf_backend.HFBackend:
    # The harness caps answers at 1024 tokens; a shorter cap measures the same per-step rate in budget.
    return hf_backend.HFBackend(model, batch_size=batch_size, max_new_tokens=new_tokens)


def synthetic_prompts(count: int, seed: int, max_tokens: int | None) -> list[list[int]]:
    """Prompts drawn from the synthetic dataset (its three parts mixed, real length mix)."""
    frame = synth_frame(PROMPT_POOL_ROWS, seed)
    rows = np.random.default_rng(seed).permutation(len(frame))[:count]
    return [list(frame["tok_input"].iloc[r][:max_tokens]) for r in rows]


class _OverBudget(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise _OverBudget in this (main) thread once `seconds` have passed: a hard stop for a run."""
    def expire(*_: Any) -> None:
        raise _OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: str) -> float:
    """GPU: the allocator's peak since the last reset. CPU: the process's peak resident set."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def measure(backend: hf_backend.HFBackend, prompts: Sequence[Sequence[int]], device: str) -> dict[str, Any]:
    """One generate over a batch: time to first token, total time, tokens/s, peak memory."""
    requests = [GenerationRequest(qsl_index=i, input_ids=p) for i, p in enumerate(prompts)]
    first_token_at: list[float] = []
    _reset_peak(device)
    start = time.perf_counter()
    answers = backend.generate(requests, on_first_token=lambda *_: first_token_at.append(time.perf_counter()))
    total_s = time.perf_counter() - start
    generated = sum(len(strip_trailing(a)) for a in answers)  # the n_tokens the SUT would report
    return {
        "batch_size": len(prompts),
        "prompt_tokens_mean": round(float(np.mean([len(p) for p in prompts])), 1),
        "padded_prompt_tokens": max(len(p) for p in prompts),
        "generated_tokens": generated,
        "ttft_s": round(first_token_at[0] - start, 4),
        "total_s": round(total_s, 4),
        "tokens_per_s": round(generated / total_s, 2),
        "peak_memory_gb": round(peak_memory_gb(device), 3),
    }


def run_batches(args: argparse.Namespace, model: torch.nn.Module, deadline: float) -> tuple[list, list]:
    """Measure each batch size in turn; skip one whose predicted time (the last run's, scaled
    linearly with batch size: pessimistic for decode) would pass the deadline."""
    prompts = synthetic_prompts(max(args.batch_sizes), args.seed, TINY_MAX_PROMPT_TOKENS if args.tiny else None)
    make_backend(model, 1, WARMUP_NEW_TOKENS).generate([GenerationRequest(0, prompts[0])])
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for batch_size in args.batch_sizes:
        left = deadline - time.perf_counter()
        if runs and runs[-1]["total_s"] * batch_size / runs[-1]["batch_size"] > left:
            skipped.append({"batch_size": batch_size, "reason": "time budget (predicted)"})
            continue
        backend = make_backend(model, batch_size, args.new_tokens)
        try:
            with _deadline(left):
                runs.append(measure(backend, prompts[:batch_size], args.device))
        except _OverBudget:
            skipped.append({"batch_size": batch_size, "reason": "time budget (cut short)"})
        except torch.OutOfMemoryError:
            skipped.append({"batch_size": batch_size, "reason": "out of memory"})
            torch.cuda.empty_cache()
        logger.info("batch %d done", batch_size)
    return runs, skipped


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    started = time.perf_counter()
    deadline = started + args.time_budget_s
    torch.manual_seed(args.seed)
    config = mixtral_config(args.tiny)
    model = build_random_model(config, args.device, torch.bfloat16, args.seed)
    build_s = time.perf_counter() - started
    logger.info("model built in %.1f s", build_s)
    runs, skipped = run_batches(args, model, deadline)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "memory_kind": "cuda_max_allocated" if args.device.startswith("cuda") else "cpu_max_rss",
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
            "attn_implementation": model.config._attn_implementation,
            "experts_implementation": model.config._experts_implementation,
        },
        "build_s": round(build_s, 2),
        "runs": runs,
        "skipped": skipped,
        "peak_memory_gb": max((r["peak_memory_gb"] for r in runs), default=None),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def render_table(result: dict[str, Any]) -> str:
    columns = ("batch_size", "prompt_tokens_mean", "padded_prompt_tokens", "generated_tokens", "ttft_s", "total_s",
               "tokens_per_s", "peak_memory_gb")
    lines = [f"{result['device']}: {result['model']['parameters'] / 1e9:.2f} B parameters, built in "
             f"{result['build_s']} s, {result['new_tokens']} new tokens per request",
             " ".join(f"{c:>20}" for c in columns)]
    lines += [" ".join(f"{r[c]:>20}" for c in columns) for r in result["runs"]]
    lines += [f"skipped batch {s['batch_size']}: {s['reason']}" for s in result["skipped"]]
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
