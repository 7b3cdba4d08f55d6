"""Generation backend on ``transformers``' ``generate``: one batched call per turn for all live trajectories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from .types import GenerationOutput

__all__ = ["HFGenerationBackend", "cut_at_stop"]


def cut_at_stop(
    token_ids: Sequence[int], eos_ids: set[int], stop_strings: Sequence[str], decode: Callable[[list[int]], str]
) -> GenerationOutput:
    """Cut raw generated ids at the first end-of-turn token (kept) or stop string (kept)."""
    ids = list(token_ids)
    first_eos = next((i for i, tok in enumerate(ids) if tok in eos_ids), None)
    before = ids if first_eos is None else ids[:first_eos]
    if stop_strings:
        def has_stop(length: int) -> bool:
            text = decode(before[:length])
            return any(stop in text for stop in stop_strings)

        if has_stop(len(before)):
            # binary search for the shortest prefix whose text contains a stop string (monotone in length)
            low, high = 1, len(before)
            while low < high:
                middle = (low + high) // 2
                if has_stop(middle):
                    high = middle
                else:
                    low = middle + 1
            return GenerationOutput(before[:low], "stop")
    if first_eos is not None:
        return GenerationOutput(ids[: first_eos + 1], "eos")
    return GenerationOutput(ids, "length")


class HFGenerationBackend:
    """Samples with ``model.generate`` on left-padded contexts.

    ``model_context`` returns a context manager yielding the model to generate with (e.g. TRL's
    ``unwrap_model_for_generation``, which gathers ZeRO-3 shards). Generation runs under
    ``torch.inference_mode`` (about 7 % faster than ``no_grad`` for a small model on CPU; only token ids leave
    it), except with ``gather_when_empty`` (ZeRO-3), whose parameter gathers stay under ``no_grad``.
    """

    def __init__(
        self,
        model_context: Callable[[], AbstractContextManager[torch.nn.Module]],
        tokenizer,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        generation_kwargs: dict | None = None,
        eos_token_ids: Sequence[int] = (),
        batch_size: int | None = None,
        gather_when_empty: bool = False,
    ):
        self.model_context = model_context
        self.tokenizer = tokenizer
        # every sampling parameter explicit (top_k=0: off), so none falls back to the model's generation_config
        # (Qwen3 ships top_k=20, top_p=0.95, temperature=0.6): rollouts must sample from the policy the loss scores
        self.sampling = dict(
            do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or 0, min_p=min_p,
            repetition_penalty=repetition_penalty,
        )
        self.generation_kwargs = dict(generation_kwargs or {})
        self.eos_token_ids = set(eos_token_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch_size = batch_size
        self.gather_when_empty = gather_when_empty

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str] = ()
    ) -> list[GenerationOutput]:
        with torch.no_grad() if self.gather_when_empty else torch.inference_mode():
            return self._generate(contexts, max_new_tokens, stop_strings)

    def _generate(self, contexts, max_new_tokens, stop_strings) -> list[GenerationOutput]:
        dummy = False
        if not contexts:
            if not self.gather_when_empty:
                return []
            # ZeRO-3: generation is collective (the gather, then every forward step, kept in step by
            # transformers' synced_gpus), so a process without live trajectories joins with a 1-token dummy
            dummy, contexts, max_new_tokens = True, [[self.pad_token_id]], [1]
        outputs: list[GenerationOutput] = []
        size = self.batch_size or len(contexts)
        with self.model_context() as model:
            was_training = model.training
            model.eval()
            try:
                for start in range(0, len(contexts), size):
                    outputs.extend(self._generate_batch(
                        model, contexts[start:start + size], max_new_tokens[start:start + size], stop_strings))
            finally:
                model.train(was_training)
        return [] if dummy else outputs

    def _generate_batch(self, model, contexts, budgets, stop_strings) -> list[GenerationOutput]:
        device = next(model.parameters()).device
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, context in enumerate(contexts):
            input_ids[row, width - len(context):] = torch.tensor(context, dtype=torch.long)
            attention_mask[row, width - len(context):] = 1
        kwargs = dict(self.sampling, **self.generation_kwargs)
        if stop_strings:
            kwargs.update(stop_strings=list(stop_strings), tokenizer=self.tokenizer)
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=max(budgets), eos_token_id=sorted(self.eos_token_ids), pad_token_id=self.pad_token_id,
            use_cache=True, **kwargs,
        )
        new_tokens = generated[:, width:].tolist()
        return [
            cut_at_stop(ids[:budget], self.eos_token_ids, stop_strings, self._decode)
            for ids, budget in zip(new_tokens, budgets)
        ]
