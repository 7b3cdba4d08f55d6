"""Supervised fine-tuning on multi-turn tool trajectories, loss on the model's own tokens only.

A conversation is encoded exactly as the rollout engine builds a trajectory (token-in/token-out,
SOD_SPEC §2): the chat-templated prompt with the generation prompt, then each assistant turn's
ids followed by the end-of-turn token (``assistant_mask = 1``), then the tool-response glue with the
observation (``assistant_mask = 0``). The loss covers only ``assistant_mask = 1`` targets, so the
model never learns to predict observations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["EncodedConversation", "encode_conversation", "SFTResult", "sft_train"]


@dataclass
class EncodedConversation:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on assistant tokens (content and end-of-turn), 0 on prompt and observations
    prompt_length: int


def encode_conversation(tokenizer, prompt: list[dict], messages: list[dict], formatter=None) -> EncodedConversation:
    """Token ids and loss mask of ``prompt`` + ``messages`` (assistant / tool turns), engine-exact."""
    from ..rollout.glue import ToolResponseFormatter

    formatter = formatter or ToolResponseFormatter(tokenizer)
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    mask = [0] * len(ids)
    prompt_length = len(ids)
    for message in messages:
        if message["role"] == "assistant":
            turn = tokenizer.encode(message["content"], add_special_tokens=False) + [tokenizer.eos_token_id]
            ids += turn
            mask += [1] * len(turn)
        elif message["role"] == "tool":
            glue = formatter(message["content"], True)
            ids += glue
            mask += [0] * len(glue)
        else:
            raise ValueError(f"Unexpected role {message['role']!r} after the prompt.")
    return EncodedConversation(ids, mask, prompt_length)


@dataclass
class SFTResult:
    log: list[dict]
    steps: int
    seconds: float


def _batch(examples: Sequence[EncodedConversation], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        mask[row, :n] = torch.tensor(example.loss_mask)
    return ids.to(device), attention.to(device), mask.to(device)


def sft_train(
    model,
    examples: Sequence[EncodedConversation],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_every: int = 25,
    callback: Callable[[int, dict], None] | None = None,
    pad_token_id: int = 0,
    max_seconds: float | None = None,
) -> SFTResult:
    """AdamW with linear warmup and cosine decay; mean cross-entropy over assistant tokens of each batch.

    ``callback(step, record)`` is called at every logging step (progress bars, evaluation).
    ``max_seconds``: after 20 steps, shorten the schedule so that training (callbacks excluded) fits.
    """
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return learning_rate * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    log: list[dict] = []
    start = time.monotonic()
    running = 0.0
    in_callbacks = 0.0
    step = 0
    while step < steps:
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        ids, attention, mask = _batch([examples[i] for i in chosen], pad_token_id, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        targets = ids[:, 1:]
        target_mask = mask[:, 1:].float()
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                   reduction="none").view_as(target_mask)
        loss = (losses * target_mask).sum() / target_mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        if max_seconds is not None and step + 1 == 20:
            per_step = (time.monotonic() - start - in_callbacks) / 20
            steps = max(20, min(steps, int(max_seconds / per_step)))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            count = (step % log_every) + 1 if (step + 1) % log_every else log_every
            record = {"step": step + 1, "loss": running / count, "lr": lr_at(step),
                      "seconds": round(time.monotonic() - start, 1)}
            running = 0.0
            log.append(record)
            if callback is not None:
                entered = time.monotonic()
                callback(step + 1, record)
                in_callbacks += time.monotonic() - entered
        step += 1
    model.eval()
    return SFTResult(log=log, steps=steps, seconds=time.monotonic() - start)
