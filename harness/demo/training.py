"""Teach the tiny demo Mixtral to answer its own sample set (memorisation is the point).

Each example is prompt ids + answer ids; the loss covers only the answer. Rows are batched by
length and right-padded: with causal attention no real position sees the padding, so no mask is
needed.

The lm_head (32000 wide) would dominate the cost, so output rows of tokens that never occur in an
answer are set to zero and left there: their logits are exactly 0 and the full-vocabulary softmax
needs only the answer vocabulary's logits plus a constant term for the rest. The loss is still the
exact full-vocabulary cross entropy of the saved model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    prompt: list[int]
    answer: list[int]  # the ids the model must learn to produce, ending with EOS


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150
    batch_size: int = 6
    lr: float = 5e-3
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    seed: int = 0


def _batches(examples: Sequence[Example], batch_size: int) -> list[list[Example]]:
    """Fixed batches of rows of similar length, so right-padding wastes little."""
    ordered = sorted(examples, key=lambda e: len(e.prompt) + len(e.answer))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _collate(batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids [B, T] right-padded with 0; answer_pos [N] flat indices (into B*T) of positions
    whose next token is an answer token; targets [N]."""
    width = max(len(e.prompt) + len(e.answer) for e in batch)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    positions, targets = [], []
    for b, e in enumerate(batch):
        seq = e.prompt + e.answer
        input_ids[b, : len(seq)] = torch.tensor(seq)
        # Position t predicts token t + 1: answer tokens are predicted from len(prompt) - 1 onwards.
        start = b * width + len(e.prompt) - 1
        positions.extend(range(start, start + len(e.answer)))
        targets.extend(e.answer)
    return input_ids, torch.tensor(positions), torch.tensor(targets)


class AnswerVocab:
    """The ids that occur in answers; every other lm_head row is held at zero."""

    def __init__(self, examples: Sequence[Example], vocab_size: int) -> None:
        self.ids = torch.tensor(sorted({t for e in examples for t in e.answer}))
        self.local = torch.full((vocab_size,), -1, dtype=torch.long)
        self.local[self.ids] = torch.arange(len(self.ids))
        # log of the softmax mass of the zero logits, exp(0) each
        self.rest_log_mass = math.log(vocab_size - len(self.ids))

    def zero_other_rows(self, lm_head: nn.Linear) -> None:
        keep = torch.zeros(lm_head.weight.shape[0], dtype=torch.bool)
        keep[self.ids] = True
        with torch.no_grad():
            lm_head.weight[~keep] = 0.0


def answer_loss(model: nn.Module, vocab: AnswerVocab, input_ids: torch.Tensor, answer_pos: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary cross entropy on the answer positions (see the module docstring)."""
    hidden = model.model(input_ids=input_ids).last_hidden_state  # [B, T, H]
    hidden = hidden.reshape(-1, hidden.shape[-1])[answer_pos]  # [N, H]
    logits = hidden @ model.lm_head.weight[vocab.ids].T  # [N, V_answer]
    rest = torch.full((logits.shape[0], 1), vocab.rest_log_mass)
    log_norm = torch.logsumexp(torch.cat([logits, rest], dim=1), dim=1)  # [N]
    return (log_norm - logits.gather(1, vocab.local[targets, None])[:, 0]).mean()


def train(model: nn.Module, examples: Sequence[Example], config: TrainConfig) -> float:
    """Train in place with AdamW (linear warmup, cosine decay); returns the last epoch's mean loss."""
    torch.manual_seed(config.seed)
    vocab = AnswerVocab(examples, model.lm_head.weight.shape[0])
    vocab.zero_other_rows(model.lm_head)
    batches = [_collate(b) for b in _batches(examples, config.batch_size)]
    total = config.epochs * len(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)  # memorising: no regularisation
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / total)))
    order = torch.Generator().manual_seed(config.seed)
    model.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    epoch_loss = float("nan")
    with tqdm(total=total, desc="training demo model", unit="step") as bar:
        for _ in range(config.epochs):
            losses = []
            for i in torch.randperm(len(batches), generator=order).tolist():
                loss = answer_loss(model, vocab, *batches[i])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # A high learning rate memorises fast; clipping keeps it from the occasional loss spike.
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update()
            epoch_loss = sum(losses) / len(losses)
            bar.set_postfix(loss=f"{epoch_loss:.4f}")
    model.eval()
    log.info("trained %d steps: final loss %.4f, %.0f s CPU, %.0f s wall", total, epoch_loss,
             time.process_time() - cpu0, time.perf_counter() - wall0)
    return epoch_loss
