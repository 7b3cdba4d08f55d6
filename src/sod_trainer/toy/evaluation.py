"""Sample toy trajectories with the real Python tool and score them (accuracy, tool use, errors).

Uses the library's own :class:`~sod_trainer.rollout.RolloutEngine` with the HF ``generate`` backend,
so that a model is evaluated in exactly the format it is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .tasks import TRANSIENT_ERROR, extract_boxed, toy_reward

__all__ = ["ToyRollout", "sample_trajectories", "evaluate_model", "summarize"]


@dataclass
class ToyRollout:
    """One sampled trajectory with what we measure about it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    assistant_mask: list[int]
    turn_errors: list[bool]  # per assistant turn: its tool call failed
    turn_tool_called: list[bool]
    observations: list[str | None]
    texts: list[str]
    answer: str
    correct: bool
    stop_reason: str

    @property
    def num_tool_calls(self) -> int:
        return sum(self.turn_tool_called)

    @property
    def num_tool_errors(self) -> int:
        return sum(self.turn_errors)

    @property
    def first_error_turn(self) -> int:
        return next((k for k, e in enumerate(self.turn_errors) if e), -1)


def sample_trajectories(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    temperature: float = 1.0,
    max_completion_length: int = 512,
    max_turns: int = 8,
    batch_size: int = 64,
    tool_workers: int = 8,
    seed: int | None = None,
    environment_factory=None,
) -> list[ToyRollout]:
    """One trajectory per row (rows have ``prompt`` and ``answer``), sampled at ``temperature``.

    ``environment_factory``: the tool (default: a fresh stateless :class:`PythonToolEnvironment` per row).
    """
    from ..data import encode_prompt
    from ..environments import PythonToolEnvironment
    from ..rollout import RolloutEngine
    from ..rollout.hf import HFGenerationBackend

    if seed is not None:
        torch.manual_seed(seed)
    backend = HFGenerationBackend(lambda: nullcontext(model), tokenizer, temperature=temperature,
                                  batch_size=batch_size)
    engine = RolloutEngine(backend, tokenizer, environment_factory or PythonToolEnvironment,
                           max_completion_length=max_completion_length,
                           max_turns=max_turns, tool_workers=tool_workers)
    results: list[ToyRollout] = []
    try:
        prompts = [encode_prompt(tokenizer, row["prompt"], max_prompt_length=None) for row in rows]
        trajectories = engine.rollout(prompts, rows)
    finally:
        engine.close()
    for row, trajectory in zip(rows, trajectories):
        final_text = trajectory.turns[-1].text if trajectory.turns else ""
        correct = toy_reward(None, [final_text], [row["answer"]])[0] > 0
        results.append(ToyRollout(
            prompt_ids=trajectory.prompt_ids, completion_ids=trajectory.completion_ids,
            assistant_mask=trajectory.assistant_mask,
            turn_errors=[t.tool_error for t in trajectory.turns],
            turn_tool_called=[t.tool_called for t in trajectory.turns],
            observations=[t.observation for t in trajectory.turns],
            texts=[t.text for t in trajectory.turns],
            answer=str(row["answer"]), correct=correct, stop_reason=trajectory.stop_reason,
        ))
    return results


def summarize(rollouts: Sequence[ToyRollout]) -> dict:
    """Accuracy and tool statistics of a set of rollouts."""
    n = max(len(rollouts), 1)
    with_error = [r for r in rollouts if r.num_tool_errors]
    # the flaky tool's injected failures (toy.environment), told apart from the student's own errors by their text
    transient = [r for r in rollouts if any(TRANSIENT_ERROR in (o or "") for o in r.observations)]
    stops: dict[str, int] = {}
    for r in rollouts:
        stops[r.stop_reason] = stops.get(r.stop_reason, 0) + 1
    return {
        "n": len(rollouts),
        "accuracy": sum(r.correct for r in rollouts) / n,
        "tool_calls_per_trajectory": sum(r.num_tool_calls for r in rollouts) / n,
        "tool_failures_per_trajectory": sum(r.num_tool_errors for r in rollouts) / n,
        "share_with_tool_error": len(with_error) / n,
        "accuracy_with_tool_error": (sum(r.correct for r in with_error) / len(with_error)) if with_error else None,
        "share_with_transient_error": len(transient) / n,
        "accuracy_with_transient_error": (sum(r.correct for r in transient) / len(transient)) if transient else None,
        "stop_reasons": stops,
        "turns_per_trajectory": sum(len(r.texts) for r in rollouts) / n,
        "boxed_rate": sum(extract_boxed(r.texts[-1] if r.texts else "") is not None for r in rollouts) / n,
    }


def evaluate_model(model, tokenizer, dataset, *, samples_per_problem: int = 1, **kwargs) -> tuple[dict, list[ToyRollout]]:
    """Accuracy (mean over samples, i.e. avg@k) and tool statistics on ``dataset`` rows."""
    rows = [dict(row) for row in dataset for _ in range(samples_per_problem)]
    rollouts = sample_trajectories(model, tokenizer, rows, **kwargs)
    return summarize(rollouts), rollouts
