import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import MixtralForCausalLM

from tools.gpu_check import build_random_model, mixtral_config

REPO = Path(__file__).resolve().parents[1]
RUN_FIGURES = ("batch_size", "prompt_tokens_mean", "padded_prompt_tokens", "generated_tokens", "ttft_s", "total_s",
               "tokens_per_s", "peak_memory_gb")


def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--tiny", "--batch-sizes", "1,2", "--new-tokens", "4",
         "--output-json", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())

    assert result["tiny"] is True and result["device"] == "cpu" and result["skipped"] == []
    assert [r["batch_size"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert set(RUN_FIGURES) <= set(run)
        assert all(run[k] > 0 for k in RUN_FIGURES)
        assert run["generated_tokens"] <= run["batch_size"] * 4
    assert result["peak_memory_gb"] > 0 and result["build_s"] >= 0 and result["elapsed_s"] > 0
    assert result["model"]["experts"] == 8 and result["model"]["top_k"] == 2 and result["model"]["vocab"] == 32000
    assert "tokens_per_s" in done.stdout  # the table printed from the same figures


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
