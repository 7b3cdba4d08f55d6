"""Scoring trajectories and per-run metrics: right or wrong per completion, per-trajectory records, average@k,
pass@k, maj@k and the tool statistics (SOD_SPEC §9). Used by
:func:`~sod_trainer.evaluation.evaluate`; usable on any trajectories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..rewards import AnswerCheck, RewardFunction, completion_text, last_boxed, normalize_final_answer
from .metrics import average_at_k, majority_at_k, pass_at_k

__all__ = ["SampleResult", "check_completions", "sample_results", "problem_metrics"]


@dataclass
class SampleResult:
    """One scored trajectory."""

    problem_index: int
    sample_index: int
    correct: bool
    answer: str | None
    detail: str
    num_turns: int
    num_tool_calls: int
    num_tool_errors: int
    completion_length: int  # tokens, tool tokens included
    model_tokens: int
    truncated: bool
    stop_reason: str
    mask_runs: list[list[int]]  # run-length assistant mask: [[1, n_model], [0, n_tool], ...]
    text: str | None = None
    turns: list[dict[str, Any]] | None = None



def _fallback_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    return normalize_final_answer(boxed) if boxed is not None else None


def check_completions(
    reward_funcs: Sequence[Callable], prompts: Sequence[Any], completions: Sequence[str],
    rows: Sequence[dict[str, Any]], trajectories: Sequence[Any] | None = None,
) -> list[AnswerCheck]:
    """Right or wrong for each completion: the first reward function that applies to its row decides.

    Our :class:`~sod_trainer.rewards.RewardFunction` objects answer through ``check`` (correctness
    and the extracted answer, unshaped); any other TRL-style function counts as right when its reward
    is positive, and its answer for maj@k is the normalized last ``\\boxed{}``.
    """
    decided: list[AnswerCheck | None] = [None] * len(completions)
    texts = [completion_text(c) for c in completions]
    for function in reward_funcs:
        pending = [i for i, check in enumerate(decided) if check is None]
        if not pending:
            break
        if isinstance(function, RewardFunction):
            checks = function.check([texts[i] for i in pending], [rows[i] for i in pending])
        else:
            columns = {key: [rows[i].get(key) for i in pending] for key in rows[pending[0]]
                       if key not in ("prompt", "messages")}
            extra = {"trajectories": [trajectories[i] for i in pending]} if trajectories is not None else {}
            values = function(prompts=[prompts[i] for i in pending], completions=[texts[i] for i in pending],
                              **columns, **extra)
            checks = [AnswerCheck(None) if v is None else AnswerCheck(float(v) > 0, _fallback_answer(texts[i]))
                      for v, i in zip(values, pending)]
        for i, check in zip(pending, checks):
            if check.correct is not None:
                decided[i] = check
    missing = [i for i, check in enumerate(decided) if check is None]
    if missing:
        names = [getattr(f, "__name__", type(f).__name__) for f in reward_funcs]
        raise ValueError(
            f"No reward function applies to {len(missing)} completions (e.g. the row with columns "
            f"{sorted(rows[missing[0]])}); reward functions: {names}. Rows need an 'answer' (math / multiple "
            "choice) or 'tests' (code) column, or pass reward_funcs that handle them."
        )
    return decided  # type: ignore[return-value]


def _mask_runs(mask: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for value in mask:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([int(value), 1])
    return runs


def sample_results(trajectories: Sequence[Any], checks: Sequence[AnswerCheck], num_samples: int, tokenizer=None,
                   keep_text: bool = True) -> list[SampleResult]:
    """Per-trajectory records; trajectory ``i`` is sample ``i % num_samples`` of problem ``i // num_samples``."""
    results = []
    for index, (trajectory, check) in enumerate(zip(trajectories, checks)):
        text = turns = None
        if keep_text:
            if tokenizer is not None:
                text = tokenizer.decode(trajectory.completion_ids, skip_special_tokens=False)
            turns = [{"text": t.text, "tool_called": t.tool_called, "tool_error": t.tool_error,
                      "observation": t.observation, "finish_reason": t.finish_reason} for t in trajectory.turns]
        results.append(SampleResult(
            problem_index=index // num_samples, sample_index=index % num_samples, correct=bool(check.correct),
            answer=check.answer, detail=check.detail, num_turns=trajectory.num_turns,
            num_tool_calls=trajectory.num_tool_calls, num_tool_errors=trajectory.num_tool_errors,
            completion_length=trajectory.completion_length, model_tokens=int(sum(trajectory.assistant_mask)),
            truncated=bool(trajectory.truncated), stop_reason=trajectory.stop_reason,
            mask_runs=_mask_runs(trajectory.assistant_mask), text=text, turns=turns,
        ))
    return results


def problem_metrics(results: Sequence[SampleResult], num_samples: int, pass_k: Sequence[int],
                    maj_k: int | None = None, majority_vote: bool = True) -> dict[str, float]:
    """The metrics of one evaluation run (fractions in [0, 1]; counts per trajectory)."""
    problems: dict[int, list[SampleResult]] = {}
    for result in results:
        problems.setdefault(result.problem_index, []).append(result)
    groups = [sorted(problems[p], key=lambda r: r.sample_index) for p in sorted(problems)]
    for group in groups:
        if len(group) != num_samples:
            raise ValueError(f"Problem {group[0].problem_index} has {len(group)} samples, expected {num_samples}.")
    correct = [[r.correct for r in group] for group in groups]
    metrics: dict[str, float] = {f"average@{num_samples}": average_at_k(correct)}
    for k in pass_k:
        metrics[f"pass@{k}"] = pass_at_k(correct, k)
    if majority_vote:
        maj_k = maj_k or num_samples
        metrics[f"maj@{maj_k}"] = majority_at_k([[r.answer for r in g] for g in groups], correct, maj_k)
    n = len(results)
    calls = sum(r.num_tool_calls for r in results)
    metrics.update({
        "tool_calls_per_trajectory": calls / n,
        "tool_failure_rate": (sum(r.num_tool_errors for r in results) / calls) if calls else 0.0,
        "error_trajectory_rate": sum(r.num_tool_errors > 0 for r in results) / n,
        "turns_per_trajectory": sum(r.num_turns for r in results) / n,
        "response_length": sum(r.completion_length for r in results) / n,
        "model_tokens": sum(r.model_tokens for r in results) / n,
        "truncated_rate": sum(r.truncated for r in results) / n,
        "answered_rate": sum(r.answer is not None for r in results) / n,
    })
    return metrics


