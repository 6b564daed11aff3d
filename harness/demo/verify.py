"""Check what the trained demo model generates for its own dataset rows.

Generation follows the reference: greedy, min_new_tokens 2, left-padded batches with pad = EOS
masked out. Rows are compared on ids, the unit the harness's stop criterion works on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import MixtralForCausalLM

from harness.backends.protocol import MBXP_STOP_IDS
from harness.tokenizer import EOS_ID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowCheck:
    id: str
    dataset: str
    generated: list[int]  # new ids only, without trailing EOS padding
    exact: bool  # generated == tok_ref_output (+ EOS where one was emitted)
    ends_with_eos: bool
    has_stop_ids: bool


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T], padded on the left with EOS (mask 0)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), EOS_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        input_ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    return input_ids, mask


def greedy_generate(model: MixtralForCausalLM, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """New ids per prompt, up to and including the first EOS."""
    input_ids, mask = left_pad(prompts)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, min_new_tokens=2,
                             max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    rows = []
    for ids in out[:, input_ids.shape[1]:].tolist():
        rows.append(ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids)
    return rows


def _contains(ids: list[int], part: tuple[int, ...]) -> bool:
    return any(tuple(ids[i : i + len(part)]) == part for i in range(len(ids) - len(part) + 1))


def check_rows(model: MixtralForCausalLM, rows: pd.DataFrame) -> list[RowCheck]:
    """Greedy-generate every row in one batch and compare with its reference output."""
    max_new = int(rows["tok_ref_output_len"].max()) + 8
    generated = greedy_generate(model, [list(t) for t in rows["tok_input"]], max_new)
    checks = []
    for (_, row), ids in zip(rows.iterrows(), generated, strict=True):
        ends_with_eos = bool(ids) and ids[-1] == EOS_ID
        answer = ids[:-1] if ends_with_eos else ids
        checks.append(RowCheck(id=row["id"], dataset=row["dataset"], generated=ids,
                               exact=ends_with_eos and answer == list(row["tok_ref_output"]),
                               ends_with_eos=ends_with_eos, has_stop_ids=_contains(answer, MBXP_STOP_IDS)))
    return checks
