"""A scored rollout batch as JSON-able trajectory records: per-token ids, text, s_t, q_t, step ids; d_k, w_k.

One record per trajectory, self-contained (one JSON object per line of a ``.jsonl`` file), so that any subset
of records renders to the same page (:mod:`sod_trainer.viewer.page`). Per-token arrays are columnar::

    {"format": "sod-trajectory/1", "index": 0, "step": 10, "mode": "train", "scheme": "sod",
     "reward": 1.0, "pattern": "recovery", "first_error_step": 1, "min_weight": 0.41, "prompt": "...",
     "tokens": {"ids": [...], "text": [...], "mask": [1, 1, 0, ...], "s": [...], "q": [...], "step": [0, 0, -1, ...]},
     "steps": [{"k": 0, "d": 0.12, "w": 1.0, "start": 0, "end": 17, "n": 17}, ...],
     "turns": [{"start": 0, "end": 17, "tool_called": true, "tool_error": true, "finish_reason": "stop"}, ...],
     "stop_reason": "eos", "truncated": false, "environment_failure": null}

``s`` and ``q`` are the student's (π_old) and the teacher's log-probs of the sampled token, ``null`` on
observation tokens. ``step`` is what the :class:`~sod_trainer.StepSegmenter` said (-1: no step). Steps are
0-based here; the page shows them 1-based, as the paper does (d_1, w_1, ...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..metrics import weight_patterns
from ..rollout.types import Trajectory

__all__ = ["FORMAT", "BatchView", "token_texts", "trajectory_record", "write_jsonl", "read_jsonl"]

FORMAT = "sod-trajectory/1"
_DIGITS = 4  # log-probs, d_k and w_k are rounded to this many decimals in the records


def _num(value: float | None, digits: int = _DIGITS) -> float | None:
    """A finite float rounded for JSON, ``None`` for NaN/inf/None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds, in context: decoding ``ids[i-4:i+1]`` minus ``ids[i-4:i]``.

    Joined, the pieces give the decoded text. Decoding in context keeps a SentencePiece token's leading
    space and puts a character split over several byte tokens on its last token (the others get ``""``).
    """
    ids = [int(i) for i in ids]
    if not ids:
        return []
    window = 4
    kwargs = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: decode in Rust, no per-id checks
    if backend is not None:
        def batch_decode(sequences):
            return backend.decode_batch(sequences, skip_special_tokens=False)
    else:
        def batch_decode(sequences):
            return tokenizer.batch_decode(sequences, **kwargs)
    before = batch_decode([ids[max(0, i - window):i] for i in range(len(ids))])
    upto = batch_decode([ids[max(0, i - window):i + 1] for i in range(len(ids))])
    pieces = []
    for i, (head, full) in enumerate(zip(before, upto)):
        # a window cut inside a character starts with U+FFFD; an incomplete one at the context's end ends with it
        head, full = head.lstrip("\ufffd").rstrip("\ufffd"), full.lstrip("\ufffd")
        if full.startswith(head):
            piece = full[len(head):]
        else:  # the context decodes differently with this token: fall back to the token alone
            piece = tokenizer.decode([ids[i]], **kwargs)
        if piece.endswith("\ufffd") and i + 1 < len(ids):
            piece = piece.rstrip("\ufffd")  # the character completes on a later token
        pieces.append(piece)
    return pieces


def _turn_dicts(trajectory: Trajectory) -> list[dict[str, Any]]:
    return [{"start": t.start, "end": t.end, "tool_called": bool(t.tool_called), "tool_error": bool(t.tool_error),
             "finish_reason": t.finish_reason} for t in trajectory.turns]


def trajectory_record(
    trajectory: Trajectory,
    tokenizer,
    *,
    student_logps: Sequence[float] | None,
    teacher_logps: Sequence[float] | None,
    step_ids: Sequence[int],
    divergence: Sequence[float],
    weights: Sequence[float],
    reward: float,
    pattern: str,
    first_error_step: int = -1,
    index: int = 0,
    **meta: Any,
) -> dict[str, Any]:
    """One trajectory's record (see the module docstring); per-step lists are indexed by 0-based step id."""
    n = trajectory.completion_length
    mask = [int(m) for m in trajectory.assistant_mask[:n]]
    steps_of_tokens = [int(k) for k in list(step_ids)[:n]]
    s = [_num(student_logps[t]) if student_logps is not None and mask[t] else None for t in range(n)]
    q = [_num(teacher_logps[t]) if teacher_logps is not None and mask[t] else None for t in range(n)]
    spans: dict[int, list[int]] = {}
    for position, k in enumerate(steps_of_tokens):
        if k >= 0:
            span = spans.setdefault(k, [position, position + 1, 0])
            span[1] = position + 1
            span[2] += 1
    steps = [{"k": k, "d": _num(divergence[k]) if k < len(divergence) else None,
              "w": _num(weights[k]) if k < len(weights) else None,
              "start": span[0], "end": span[1], "n": span[2]} for k, span in sorted(spans.items())]
    step_weights = [step["w"] for step in steps if step["w"] is not None]
    return {
        "format": FORMAT, "index": int(index), **meta,
        "reward": _num(reward), "pattern": pattern, "first_error_step": int(first_error_step),
        "min_weight": min(step_weights) if step_weights else None,
        "prompt": tokenizer.decode(trajectory.prompt_ids, skip_special_tokens=False),
        "tokens": {"ids": [int(i) for i in trajectory.completion_ids], "text": token_texts(tokenizer,
                                                                                           trajectory.completion_ids),
                   "mask": mask, "s": s, "q": q, "step": steps_of_tokens},
        "steps": steps,
        "turns": _turn_dicts(trajectory),
        "stop_reason": trajectory.stop_reason, "truncated": bool(trajectory.truncated),
        "environment_failure": trajectory.environment_failure,
    }


@dataclass
class BatchView:
    """What the viewer needs of a scored rollout batch, on the CPU; ``records()`` turns it into records.

    ``student_logps`` and the step weighting may arrive after the batch (on-policy batches get π_old from
    the loss's forward pass): :meth:`fill` puts them in. Without a teacher (plain GRPO) ``teacher_logps``
    is ``None`` and q_t = s_t, as in the trainer.
    """

    trajectories: list[Trajectory]
    rewards: torch.Tensor  # (B,)
    step_ids: torch.Tensor  # (B, C)
    error_steps: torch.Tensor  # (B,)
    teacher_logps: torch.Tensor | None = None  # (B, C)
    student_logps: torch.Tensor | None = None  # (B, C)
    divergence: torch.Tensor | None = None  # (B, K)
    valid: torch.Tensor | None = None  # (B, K)
    weights: torch.Tensor | None = None  # (B, K)
    scheme: str = "sod"
    pattern_threshold: float = 0.8

    @classmethod
    def from_scoring(cls, trajectories, rewards, step_ids, error_steps, teacher_logps=None, student_logps=None,
                     weighting=None, args=None) -> BatchView:
        """From :meth:`RolloutScorer.build`'s tensors (any device); ``weighting`` a ``StepWeighting`` or None."""
        view = cls(list(trajectories), _cpu(rewards), _cpu(step_ids), _cpu(error_steps), _cpu(teacher_logps),
                   scheme=getattr(args, "step_weighting", "sod"),
                   pattern_threshold=getattr(args, "pattern_threshold", 0.8))
        view.fill(weighting, student_logps)
        return view

    def fill(self, weighting=None, student_logps: torch.Tensor | None = None) -> None:
        """Add π_old's log-probs and the step weighting (a ``StepWeighting``) once they are known."""
        if student_logps is not None:
            self.student_logps = _cpu(student_logps)
        if weighting is not None:
            if getattr(weighting, "teacher_logps", None) is not None:  # the q_t the weights were computed from
                self.teacher_logps = _cpu(weighting.teacher_logps)
            self.divergence = _cpu(weighting.divergence)
            self.valid = _cpu(weighting.valid).bool()
            self.weights = _cpu(weighting.weights_per_step)

    @property
    def complete(self) -> bool:
        """Whether every row has π_old's log-probs and step weights (on-policy batches: after the loss)."""
        rows = len(self.trajectories)
        return (self.student_logps is not None and self.weights is not None
                and self.student_logps.shape[0] >= rows and self.weights.shape[0] >= rows)

    def records(self, tokenizer, **meta: Any) -> list[dict[str, Any]]:
        """One record per trajectory; ``meta`` (step, mode, ...) is copied into each."""
        if not self.complete:
            raise ValueError("This batch view has no student log-probs or step weights yet (an on-policy batch "
                             "gets them from the loss): call fill(weighting, student_logps) first.")
        rows = len(self.trajectories)
        valid = self.valid[:rows]
        labels = weight_patterns(self.weights[:rows], valid, self.pattern_threshold)
        teacher = self.teacher_logps if self.teacher_logps is not None else self.student_logps
        records = []
        for row, trajectory in enumerate(self.trajectories):
            k_valid = valid[row]
            records.append(trajectory_record(
                trajectory, tokenizer, student_logps=self.student_logps[row].tolist(),
                teacher_logps=teacher[row].tolist(), step_ids=self.step_ids[row].tolist(),
                divergence=torch.where(k_valid, self.divergence[row], torch.nan).tolist(),
                weights=torch.where(k_valid, self.weights[row], torch.nan).tolist(),
                reward=float(self.rewards[row]), pattern=labels[row], first_error_step=int(self.error_steps[row]),
                index=row, scheme=self.scheme, pattern_threshold=self.pattern_threshold, **meta,
            ))
        return records


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().float().cpu() if tensor.is_floating_point() \
        else tensor.detach().cpu()


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write records one per line (atomically: a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(partial, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a ``.jsonl`` file; a line that is not a trajectory record is an error naming the line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error}).") from error
            missing = {"tokens", "steps", "reward"} - set(record) if isinstance(record, dict) else {"an object"}
            if missing:
                raise ValueError(f"{path}:{number} is not a trajectory record (missing {sorted(missing)}); "
                                 f"`sod inspect` reads the .jsonl files written next to the pages "
                                 f"(format {FORMAT}, see sod_trainer.viewer.records).")
            records.append(record)
    return records
