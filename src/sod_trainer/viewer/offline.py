"""Score rollouts outside the trainer for the viewer: the demo's and an ablation's before/after pages.

:func:`score_trajectories` computes, for any list of :class:`~sod_trainer.rollout.Trajectory` (any tool
environment) and any :class:`~sod_trainer.StepSegmenter`, the student's and the teacher's log-probs of the
sampled tokens, d_k and w_k, exactly as :class:`~sod_trainer.scoring.RolloutScorer` does in training, and
returns a :class:`~sod_trainer.viewer.records.BatchView`. :func:`write_rollout_page` adds the page on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..logprobs import sampled_token_logprobs
from ..objective import step_and_token_weights
from ..rollout.types import Trajectory, Turn
from ..scoring import StepWeighting, collate_trajectories, error_steps_for
from ..segmenters import StepSegmenter, TurnSegmenter
from .page import write_index
from .records import BatchView

__all__ = ["score_trajectories", "write_rollout_page", "trajectories_from_masks", "write_toy_rollouts_page"]


@torch.no_grad()
def _logprobs(model, tensors: dict[str, torch.Tensor], batch_size: int, temperature: float) -> torch.Tensor:
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, tensors["input_ids"].shape[0], batch_size):
        part = {key: value[start:start + batch_size].to(device) for key, value in tensors.items()}
        logps, _ = sampled_token_logprobs(model, part["input_ids"], part["attention_mask"], part["completion_start"],
                                          part["assistant_mask"], temperature=temperature)
        outputs.append(logps.float().cpu())
    return torch.cat(outputs)


def score_trajectories(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    trajectories: Sequence[Trajectory],
    rewards: Sequence[float],
    *,
    pad_token_id: int,
    segmenter: StepSegmenter | None = None,
    step_weighting: str = "sod",
    epsilon: float = 1e-6,
    delta: float = 0.2,
    decay: float = 0.9,
    temperature: float = 1.0,
    pattern_threshold: float = 0.8,
    batch_size: int = 16,
) -> BatchView:
    """A :class:`BatchView` of ``trajectories`` with both models' log-probs and the steps of ``segmenter``."""
    trajectories = list(trajectories)
    if len(rewards) != len(trajectories):
        raise ValueError(f"{len(rewards)} rewards for {len(trajectories)} trajectories; give one per trajectory.")
    tensors = collate_trajectories(trajectories, pad_token_id)
    inputs = {key: tensors[key] for key in ("input_ids", "attention_mask", "completion_start", "assistant_mask")}
    student_logps = _logprobs(student, inputs, batch_size, temperature)
    teacher_logps = _logprobs(teacher, inputs, batch_size, temperature) if teacher is not None else None
    step_ids = (segmenter or TurnSegmenter())(tensors["completion_ids"], tensors["assistant_mask"]).cpu()
    error_steps = error_steps_for(trajectories, step_ids)
    divergence, valid, weights, _ = step_and_token_weights(
        student_logps, teacher_logps if teacher_logps is not None else student_logps, step_ids,
        scheme=step_weighting, epsilon=epsilon, delta=delta, error_steps=error_steps, decay=decay)
    view = BatchView(trajectories, torch.tensor([float(r) for r in rewards]), step_ids, error_steps, teacher_logps,
                     scheme=step_weighting, pattern_threshold=pattern_threshold)
    view.fill(StepWeighting(divergence, valid, weights, torch.zeros(0)), student_logps)
    return view


def write_rollout_page(view: BatchView, tokenizer, folder: str | os.PathLike, name: str, *, title: str | None = None,
                       **meta) -> Path:
    """Write ``<folder>/<name>.html`` and ``<name>.jsonl`` for ``view``; returns the page's path."""
    from .trackers import write_batch

    records = view.records(tokenizer, **meta)
    page, _, _ = write_batch(records, folder, name, title=title, pattern_threshold=view.pattern_threshold)
    return page


def trajectories_from_masks(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                            assistant_masks: Sequence[Sequence[int]], tool_errors: Sequence[Sequence[bool]],
                            tool_called: Sequence[Sequence[bool]] | None = None,
                            stop_reasons: Sequence[str] | None = None) -> list[Trajectory]:
    """Trajectories from plain id lists: turn k is the k-th run of model tokens, ``tool_errors[i][k]`` its call
    failed (for rollouts kept as ids, e.g. the toy world's ``ToyRollout``)."""
    result = []
    for index, (prompt, completion, mask, errors) in enumerate(zip(prompt_ids, completion_ids, assistant_masks,
                                                                  tool_errors)):
        trajectory = Trajectory(list(prompt), completion_ids=list(completion), assistant_mask=list(mask),
                                stop_reason=stop_reasons[index] if stop_reasons else "")
        position, turn_index = 0, 0
        while position < len(mask):
            if mask[position] != 1:
                position += 1
                continue
            end = position
            while end < len(mask) and mask[end] == 1:
                end += 1
            error = bool(errors[turn_index]) if turn_index < len(errors) else False
            called = tool_called[index][turn_index] if tool_called is not None and turn_index < len(
                tool_called[index]) else end < len(mask)  # default: an observation follows
            trajectory.turns.append(Turn(position, end, "", "stop", tool_called=called or error, tool_error=error))
            position, turn_index = end, turn_index + 1
        result.append(trajectory)
    return result


def write_toy_rollouts_page(student: torch.nn.Module, teacher: torch.nn.Module | None, tokenizer, rollouts,
                            folder: str | os.PathLike, name: str, *, title: str | None = None,
                            step_weighting: str = "sod", limit: int | None = 64) -> Path:
    """The page of toy-world rollouts (``sod_trainer.toy.evaluation.ToyRollout``: ids, mask, per-turn tool
    errors; reward +1 correct, -1 not, as ``toy_reward``), scored with ``student`` and ``teacher``; at most ``limit`` of them."""
    rollouts = list(rollouts)[:limit]
    trajectories = trajectories_from_masks(
        [r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts], [r.assistant_mask for r in rollouts],
        [r.turn_errors for r in rollouts], tool_called=[r.turn_tool_called for r in rollouts],
        stop_reasons=[r.stop_reason for r in rollouts])
    view = score_trajectories(student, teacher, trajectories, [1.0 if r.correct else -1.0 for r in rollouts],
                              pad_token_id=tokenizer.pad_token_id, step_weighting=step_weighting)
    page = write_rollout_page(view, tokenizer, folder, name, title=title or f"SOD trajectories — {name}")
    write_index(folder)
    return page

