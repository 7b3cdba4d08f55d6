"""Per-step diagnostics of sampled trajectories: d_k, w_k, teacher entropy, reverse KL, worst-token share.

For each trajectory, the student's and the teacher's log-probs of the sampled tokens are recomputed
(one forward pass each, no gradient), the steps are the runs of ``assistant_mask == 1`` (SOD_SPEC §2),
and each step is labelled by what came before it: the first step, a step after a clean observation,
or a step after an error observation (traceback). This is what tells whether the toy world shows
SOD's failure mode (the divergence jumping after erroneous tool calls).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..objective import step_divergence, step_ids_from_mask, step_weights

__all__ = ["StepRecord", "TrajectoryDiagnostics", "score_rollouts", "aggregate", "classify_pattern"]


@dataclass
class StepRecord:
    index: int
    context: str  # "first", "after_clean", "after_error"
    tool_error: bool  # this step's own tool call failed
    divergence: float  # d_k
    weight: float  # w_k (sod)
    teacher_entropy: float
    student_entropy: float
    reverse_kl: float  # full-vocabulary KL(student || teacher), mean over the step's tokens
    worst_token_share: float  # share of the step's sum |s - q| carried by its worst token
    tokens: int


@dataclass
class TrajectoryDiagnostics:
    steps: list[StepRecord] = field(default_factory=list)
    correct: bool = False
    pattern: str = "stable"


def classify_pattern(weights: Sequence[float], threshold: float = 0.8) -> str:
    """SOD_SPEC §10 [ours]: stable if min w >= threshold, erroneous if the last w < threshold, else recovery."""
    if not weights or min(weights) >= threshold:
        return "stable"
    return "erroneous" if weights[-1] < threshold else "recovery"


@torch.no_grad()
def _token_stats(model, sequences: list[list[int]], pad_id: int, batch_size: int = 16):
    """Per sequence: log-prob of each next token and the full next-token log-softmax (positions 1..n-1)."""
    outputs = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).cpu()
        for row, seq in enumerate(chunk):
            n = len(seq)
            outputs.append(logp[row, : n - 1])
    return outputs


@torch.no_grad()
def score_rollouts(student, teacher, rollouts, pad_token_id: int, *, epsilon: float = 1e-6, delta: float = 0.2,
                   threshold: float = 0.8) -> list[TrajectoryDiagnostics]:
    """Diagnostics of every rollout (``ToyRollout`` objects from :mod:`sod_trainer.toy.evaluation`)."""
    sequences = [r.prompt_ids + r.completion_ids for r in rollouts]
    student_logp = _token_stats(student, sequences, pad_token_id)
    teacher_logp = _token_stats(teacher, sequences, pad_token_id)
    results = []
    for rollout, s_full, q_full in zip(rollouts, student_logp, teacher_logp):
        p = len(rollout.prompt_ids)
        completion = torch.tensor(rollout.completion_ids)
        mask = torch.tensor(rollout.assistant_mask)
        if completion.numel() == 0:
            results.append(TrajectoryDiagnostics(correct=rollout.correct))
            continue
        rows = torch.arange(p - 1, p - 1 + completion.numel())
        s_dist, q_dist = s_full[rows], q_full[rows]
        s = s_dist.gather(1, completion[:, None]).squeeze(1)
        q = q_dist.gather(1, completion[:, None]).squeeze(1)
        step_ids = step_ids_from_mask(mask[None])[0]
        d, valid = step_divergence(s[None], q[None], step_ids[None])
        w = step_weights(d, valid, scheme="sod", epsilon=epsilon, delta=delta)[0]
        teacher_entropy = -(q_dist.exp() * q_dist).sum(-1)
        student_entropy = -(s_dist.exp() * s_dist).sum(-1)
        reverse_kl = (s_dist.exp() * (s_dist - q_dist)).sum(-1)
        gap = (s - q).abs()
        diagnostics = TrajectoryDiagnostics(correct=rollout.correct)
        for k in range(int(valid[0].sum())):
            on = step_ids == k
            previous_error = rollout.turn_errors[k - 1] if 0 < k <= len(rollout.turn_errors) else False
            context = "first" if k == 0 else ("after_error" if previous_error else "after_clean")
            step_gap = gap[on]
            diagnostics.steps.append(StepRecord(
                index=k, context=context,
                tool_error=bool(rollout.turn_errors[k]) if k < len(rollout.turn_errors) else False,
                divergence=float(d[0, k]), weight=float(w[k]),
                teacher_entropy=float(teacher_entropy[on].mean()), student_entropy=float(student_entropy[on].mean()),
                reverse_kl=float(reverse_kl[on].mean()),
                worst_token_share=float(step_gap.max() / step_gap.sum().clamp(min=1e-9)),
                tokens=int(on.sum()),
            ))
        diagnostics.pattern = classify_pattern([st.weight for st in diagnostics.steps], threshold)
        results.append(diagnostics)
    return results


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(diagnostics: Sequence[TrajectoryDiagnostics], max_index: int = 6) -> dict:
    """Means by context (first / after clean / after error), by step index, pattern shares."""
    by_context: dict[str, list[StepRecord]] = defaultdict(list)
    by_index: dict[int, list[StepRecord]] = defaultdict(list)
    erroneous_step: list[StepRecord] = []
    for trajectory in diagnostics:
        for step in trajectory.steps:
            by_context[step.context].append(step)
            if step.index < max_index:
                by_index[step.index].append(step)
            if step.tool_error:
                erroneous_step.append(step)

    def summary(steps: list[StepRecord]) -> dict:
        return {
            "n": len(steps),
            "d": _mean([s.divergence for s in steps]),
            "w": _mean([s.weight for s in steps]),
            "teacher_entropy": _mean([s.teacher_entropy for s in steps]),
            "student_entropy": _mean([s.student_entropy for s in steps]),
            "reverse_kl": _mean([s.reverse_kl for s in steps]),
            "worst_token_share": _mean([s.worst_token_share for s in steps]),
        }

    patterns = defaultdict(int)
    for trajectory in diagnostics:
        patterns[trajectory.pattern] += 1
    total = max(len(diagnostics), 1)
    with_error = [t for t in diagnostics if any(s.tool_error for s in t.steps)]
    without_error = [t for t in diagnostics if not any(s.tool_error for s in t.steps)]
    return {
        "by_context": {name: summary(by_context[name]) for name in ("first", "after_clean", "after_error")},
        "erroneous_step": summary(erroneous_step),
        "by_step_index": {str(k): summary(by_index[k]) for k in sorted(by_index)},
        "pattern_shares": {name: patterns[name] / total for name in ("stable", "erroneous", "recovery")},
        "min_w_with_tool_error": _mean([min((s.weight for s in t.steps), default=1.0) for t in with_error]),
        "min_w_without_tool_error": _mean([min((s.weight for s in t.steps), default=1.0) for t in without_error]),
        "trajectories": len(diagnostics),
    }
