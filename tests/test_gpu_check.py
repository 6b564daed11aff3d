import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import MixtralForCausalLM

from tools.gpu_check import build_random_model, mixtral_config, render_table

REPO = Path(__file__).resolve().parents[1]
RUN_FIGURES = ("batch_size", "prompt_tokens_mean", "padded_prompt_tokens", "generated_tokens", "ttft_s", "total_s",
               "tokens_per_s", "peak_memory_gb")


def run_tiny(tmp_path, batch_sizes: str, *paths: str) -> tuple[dict, str]:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--tiny", "--batch-sizes", batch_sizes, "--new-tokens", "4",
         "--paths", ",".join(paths), "--output-json", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads(out.read_text()), done.stdout


def assert_runs(path: dict, batch_sizes: list[int], max_tokens_per_request: int, memory: bool) -> None:
    assert path["skipped"] == [] and path["build_s"] >= 0
    assert [r["batch_size"] for r in path["runs"]] == batch_sizes
    for run in path["runs"]:
        assert set(RUN_FIGURES) <= set(run)
        assert all(run[k] > 0 for k in RUN_FIGURES if k != "peak_memory_gb")
        assert (run["peak_memory_gb"] > 0) if memory else run["peak_memory_gb"] is None
        assert run["generated_tokens"] <= run["batch_size"] * max_tokens_per_request


def test_tiny_run_writes_every_figure_for_both_hf_batchings(tmp_path):
    result, stdout = run_tiny(tmp_path, "1,2", "hf", "hf-inflight")

    assert result["tiny"] is True and result["device"] == "cpu" and list(result["paths"]) == ["hf", "hf-inflight"]
    for name, batching in (("hf", "static"), ("hf-inflight", "inflight")):
        assert_runs(result["paths"][name], [1, 2], 4, memory=True)
        assert result["paths"][name]["batching"] == batching and result["paths"][name]["peak_memory_gb"] > 0
    assert result["elapsed_s"] > 0
    assert result["model"]["experts"] == 8 and result["model"]["top_k"] == 2 and result["model"]["vocab"] == 32000
    assert "tokens_per_s" in stdout  # the table printed from the same figures


def test_tiny_run_measures_vllm_in_process_in_parallel_and_behind_its_server(tmp_path):
    pytest.importorskip("vllm")
    names = ["vllm", "vllm-tp2", "vllm-replicas2", "openai"]
    result, stdout = run_tiny(tmp_path, "2", *names)  # up to 1,024 tokens each: one batch size

    assert sorted(result["paths"]) == sorted(names)
    for name in names:
        assert_runs(result["paths"][name], [2], 1024, memory=False)  # the engines run in other processes
        assert result["paths"][name]["max_new_tokens"] == 1024
    assert [(result["paths"][name]["tensor_parallel_size"], result["paths"][name]["replicas"])
            for name in names[:3]] == [(1, 1), (2, 1), (1, 2)]
    assert result["paths"]["openai"]["server"].startswith("http://127.0.0.1:")
    table_rows = [line.split() for line in stdout.splitlines()]
    assert sum(row[:1] == ["openai"] for row in table_rows) == 1  # one table row per batch size


def test_real_shapes_are_mixtral_8x7b():
    with torch.device("meta"):
        model = MixtralForCausalLM(mixtral_config(tiny=False))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 46.7


def test_random_model_has_real_rotary_frequencies_and_finite_logits():
    config = mixtral_config(tiny=True)
    model = build_random_model(config, "cpu", torch.bfloat16, seed=0)
    reference = MixtralForCausalLM(config)  # built the ordinary way, on the host

    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.tensor([[1, 1, 28705, 733, 16289, 28793]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.quick
def test_a_path_without_enough_gpus_is_one_table_line():
    result = {"device": "NVIDIA H200", "model": {"parameters": 46.7e9}, "new_tokens": 128,
              "paths": {"vllm-tp2": {"skipped_path": "2 GPUs needed, 1 visible", "runs": [], "skipped": []}}}
    assert render_table(result).splitlines()[2:] == ["vllm-tp2: skipped: 2 GPUs needed, 1 visible"]
