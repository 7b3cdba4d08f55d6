"""Step segmenters: which tokens of a trajectory form step k (SOD_SPEC §2).

A segmenter maps ``(completion_ids, assistant_mask)`` to a ``(B, T)`` integer tensor of 0-based step
ids, ``-1`` on tokens that belong to no step (observations, padding). SOD weights are constant
within a step, so the segmenter decides the granularity of the signal.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .objective import step_ids_from_mask

__all__ = ["StepSegmenter", "TurnSegmenter", "FixedLengthSegmenter", "BlankLineSegmenter", "get_segmenter"]


@runtime_checkable
class StepSegmenter(Protocol):
    """Anything with ``__call__(completion_ids, assistant_mask) -> step_ids`` (all ``(B, T)``)."""

    def __call__(self, completion_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor: ...


class TurnSegmenter:
    """Default: step k is the k-th maximal run of ``assistant_mask == 1`` (one assistant turn)."""

    def __call__(self, completion_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
        return step_ids_from_mask(assistant_mask)


def _split_runs(assistant_mask: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Step ids where a new step starts at every mask-run start and at every ``boundary`` token."""
    mask = assistant_mask.to(torch.long)
    previous = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=0)
    starts = ((mask == 1) & ((previous == 0) | boundary)).to(torch.long)
    ids = torch.cumsum(starts, dim=1) - 1
    return torch.where(mask == 1, ids, torch.full_like(ids, -1))


class FixedLengthSegmenter:
    """Text-only SOD [ours]: split each run of model tokens every ``step_tokens`` tokens."""

    def __init__(self, step_tokens: int = 256):
        if step_tokens < 1:
            raise ValueError(f"step_tokens must be >= 1, got {step_tokens}.")
        self.step_tokens = step_tokens

    def __call__(self, completion_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
        mask = assistant_mask.to(torch.long)
        # position of each model token within its run
        previous = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=0)
        run_start = (mask == 1) & (previous == 0)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        start_pos = torch.where(run_start, positions, torch.zeros_like(positions))
        start_pos = torch.cummax(start_pos, dim=1).values
        offset = positions - start_pos
        boundary = (offset > 0) & (offset % self.step_tokens == 0)
        return _split_runs(assistant_mask, boundary)


class BlankLineSegmenter:
    """Text-only SOD [ours]: a new step starts after each blank line (``\\n\\n``) in the model's text.

    A blank line may be one token (``"\\n\\n"``) or two (``"\\n"``, ``"\\n"``); both are found from
    per-token tables built once from the vocabulary.
    """

    def __init__(self, tokenizer):
        vocab_size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        decoded = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in tokens]
        self._has_blank_line = torch.tensor(["\n\n" in text for text in decoded], dtype=torch.bool)
        self._starts_newline = torch.tensor([text.startswith("\n") for text in decoded], dtype=torch.bool)
        self._ends_newline = torch.tensor([text.endswith("\n") for text in decoded], dtype=torch.bool)

    def __call__(self, completion_ids: torch.Tensor, assistant_mask: torch.Tensor) -> torch.Tensor:
        ids = completion_ids.clamp(0, self._has_blank_line.numel() - 1)
        has_blank = self._has_blank_line.to(ids.device)[ids]
        starts = self._starts_newline.to(ids.device)[ids]
        ends = self._ends_newline.to(ids.device)[ids]
        previous_ends = torch.nn.functional.pad(ends[:, :-1], (1, 0), value=False)
        paragraph_end = (has_blank | (previous_ends & starts)) & (assistant_mask == 1)
        boundary = torch.nn.functional.pad(paragraph_end[:, :-1], (1, 0), value=False)
        return _split_runs(assistant_mask, boundary)


def get_segmenter(name: str, tokenizer=None, step_tokens: int = 256) -> StepSegmenter:
    """Build a built-in segmenter by name: ``turn`` (default), ``fixed_length``, ``blank_line``."""
    if name == "turn":
        return TurnSegmenter()
    if name == "fixed_length":
        return FixedLengthSegmenter(step_tokens)
    if name == "blank_line":
        if tokenizer is None:
            raise ValueError("The blank_line segmenter needs the tokenizer (processing_class).")
        return BlankLineSegmenter(tokenizer)
    raise ValueError(f"Unknown step_segmenter {name!r}; choose 'turn', 'fixed_length' or 'blank_line', "
                     "or pass a StepSegmenter instance to SODTrainer(step_segmenter=...).")
