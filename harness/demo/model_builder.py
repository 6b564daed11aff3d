"""The tiny demo Mixtral: same architecture family and tokenizer as Mixtral-8x7B-Instruct, a few
million parameters, trained on the demo dataset and written as a complete checkpoint folder."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

from harness.backends.protocol import MBXP_STOP_IDS
from harness.demo.training import Example, TrainConfig, train
from harness.tokenizer import BOS_ID, EOS_ID, save_tokenizer

log = logging.getLogger(__name__)

MODEL_SEED = 0
TRAIN_THREADS = 1  # fixed, so the build gives the same weights on any machine; 1 beats 2 on a busy box


def tiny_mixtral_config() -> MixtralConfig:
    # head_dim 64: vLLM's CPU attention rejects smaller heads (16 fails, 64 works).
    return MixtralConfig(
        vocab_size=32000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, rope_theta=1e6, sliding_window=None, rms_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, tie_word_embeddings=False,
        torch_dtype="float32",
    )


def generation_config() -> GenerationConfig:
    return GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, do_sample=False)


def training_answer(row: pd.Series) -> list[int]:
    """Ids the model learns to emit for a row: the reference output then EOS. For MBXP the
    harness stops on ids, so the answer must end with exactly MBXP_STOP_IDS before EOS."""
    answer = list(row["tok_ref_output"])
    if row["dataset"] == "MBXP" and tuple(answer[-len(MBXP_STOP_IDS):]) != MBXP_STOP_IDS:
        log.warning("%s: ref output ids end %s, training on the stop ids instead", row["id"], answer[-4:])
        answer = answer[: -len(MBXP_STOP_IDS)] + list(MBXP_STOP_IDS)
    return answer + [EOS_ID]


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the build, restored afterwards."""
    saved_threads, saved_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det)


def train_demo_model(dataset: pd.DataFrame, config: TrainConfig | None = None) -> MixtralForCausalLM:
    examples = [Example(list(r["tok_input"]), training_answer(r)) for _, r in dataset.iterrows()]
    with _deterministic_torch(TRAIN_THREADS):
        torch.manual_seed(MODEL_SEED)
        model = MixtralForCausalLM(tiny_mixtral_config()).float()
        log.info("tiny Mixtral: %.1f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
        train(model, examples, config or TrainConfig())
    return model


def save_checkpoint(model: MixtralForCausalLM, tokenizer_model: Path, out_dir: Path) -> None:
    """A folder laid out like the real checkpoint: config, safetensors weights, generation config,
    tokenizer files."""
    model.generation_config = generation_config()
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer_model, out_dir)
