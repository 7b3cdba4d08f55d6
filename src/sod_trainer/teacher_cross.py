"""A teacher with another tokenizer: its log-probs of the student's own text, mapped back onto the student's
tokens (issue 19; see docs/concepts.md, "Teachers with another tokenizer").

For each trajectory the teacher reads the same conversation in its own chat template and tokenizer: the prompt
messages, each sampled assistant turn's text, and each tool observation wrapped in the teacher template's own
glue (derived like the student's, :class:`~sod_trainer.rollout.ToolResponseFormatter`). Any same-tokenizer
scorer (:class:`~sod_trainer.teacher.LocalTeacher`, :class:`~sod_trainer.teacher_server.ServerTeacher`) scores
those teacher tokens, with the same collective pattern as on the shared path (one call per chunk of
``rows_per_call`` rows, so ZeRO-3 processes stay in lockstep). Within each assistant turn both tokenizations are
aligned on the turn's bytes (:func:`~sod_trainer.alignment.align_pieces`): a span is the smallest run of
student tokens and of teacher tokens covering the same text, and its teacher log-prob ``Q`` is the sum over its
teacher tokens. A turn that ended with the student's end-of-turn token is matched with the teacher template's
end-of-turn token(s): the teacher's probability of ending the turn there.

The result carries ``Q`` on the span's last student token (0 on its others) and the span id of every student
token; :func:`~sod_trainer.objective.spread_span_logps` turns that into per-token ``q_t`` once the student's
``s_t`` are known. Student tokens that cannot be aligned are marked, counted (``teacher/unaligned_tokens``) and
left out of the loss by the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .alignment import TokenBytes, align_pieces, equal_text_cuts
from .data import encode_prompt
from .rollout.glue import ToolResponseFormatter
from .rollout.types import Trajectory

__all__ = ["CrossTokenizerTeacher", "CrossTeacherScores"]


@dataclass
class CrossTeacherScores:
    """``(B, C)`` per student completion token: span log-probs (``Q`` on a span's last token), span ids (-1: no
    span) and which model tokens were aligned; plus counts for the metrics."""

    logps: torch.Tensor
    span_ids: torch.Tensor
    aligned: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class _Plan:
    """One trajectory rendered for the teacher, and which teacher tokens score which student tokens."""

    ids: list[int]
    prompt_length: int
    scored: list[int]  # teacher completion positions to score
    groups: list[tuple[int, int, int, int]]  # student [s0, s1) and teacher [t0, t1) completion positions
    unaligned: list[int]  # student completion positions


def _ranges(starts: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranges ``[starts[g], ends[g])``: the range index and the position of every element, concatenated."""
    lengths = ends - starts
    group = torch.repeat_interleave(torch.arange(len(starts)), lengths)
    offsets = torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths)
    return group, torch.arange(len(group)) + offsets


class CrossTokenizerTeacher:
    """``score_trajectories(...)``: a teacher with its own tokenizer and chat template scores the student's turns.

    Args:
        scorer: a same-tokenizer scorer over the teacher's tokens (``LocalTeacher`` or ``ServerTeacher`` built
            with ``teacher_tokenizer``).
        tokenizer: the student's tokenizer. teacher_tokenizer: the teacher's (with a chat template).
        chat_template_kwargs: passed to the teacher's chat template (as to the student's).
        tool_response_template: the teacher's observation glue; default derived from its chat template.
        eos_token_ids: the student's end-of-turn ids (default its ``eos_token_id``).
    """

    def __init__(self, scorer, tokenizer, teacher_tokenizer, *, chat_template_kwargs: dict | None = None,
                 tool_response_template: str | None = None, eos_token_ids: Sequence[int] | None = None):
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        try:
            self.formatter = ToolResponseFormatter(teacher_tokenizer, tool_response_template,
                                                   self.chat_template_kwargs)
        except ValueError as error:
            raise ValueError(f"The teacher's tokenizer cannot wrap tool observations: {error} (for the teacher, "
                             "pass CrossTokenizerTeacher(tool_response_template=...)).") from error
        self.eos_token_ids = set(eos_token_ids or []) | {tokenizer.eos_token_id}
        end = self.formatter.end_of_turn or (teacher_tokenizer.eos_token or "")
        self.end_of_turn = teacher_tokenizer.encode(end, add_special_tokens=False) if end else []
        self.end_of_glued_turn = (teacher_tokenizer.encode(self.formatter.end_of_turn, add_special_tokens=False)
                                  if self.formatter.end_of_turn else [])
        self.student_bytes = TokenBytes(tokenizer)
        self.teacher_bytes = TokenBytes(teacher_tokenizer)
        pad = teacher_tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (teacher_tokenizer.eos_token_id or 0)

    # ------------------------------------------------------------------ rendering and alignment
    def plan(self, trajectory: Trajectory, messages: list[dict]) -> _Plan:
        """The teacher's ids for one trajectory and the groups of student and teacher tokens to match."""
        prompt = encode_prompt(self.teacher_tokenizer, messages, max_prompt_length=None,
                               chat_template_kwargs=self.chat_template_kwargs)
        completion: list[int] = []
        scored: list[int] = []
        groups: list[tuple[int, int, int, int]] = []
        unaligned: list[int] = []
        ids = trajectory.completion_ids
        for index, turn in enumerate(trajectory.turns):
            turn_ids = ids[turn.start:turn.end]
            ended = (turn.finish_reason == "eos" and bool(turn_ids) and turn_ids[-1] in self.eos_token_ids)
            content = turn_ids[:-1] if ended else turn_ids
            followed = index + 1 < len(trajectory.turns)
            pieces = self.student_bytes.pieces(content)
            if pieces is None:  # the student's tokenizer cannot say which text its tokens are: nothing to align
                text = self.tokenizer.decode(content, skip_special_tokens=False)
                unaligned.extend(range(turn.start, turn.start + len(content)))
                teacher_content = self.teacher_tokenizer.encode(text, add_special_tokens=False)
            else:
                raw = b"".join(pieces)
                text = raw.decode("utf-8", errors="replace")
                teacher_content = self.teacher_tokenizer.encode(text, add_special_tokens=False)
                teacher_pieces = self.teacher_bytes.pieces(teacher_content)
                if teacher_pieces is None:
                    unaligned.extend(range(turn.start, turn.start + len(content)))
                else:
                    offset = len(completion)
                    if raw and raw == b"".join(teacher_pieces):  # the same bytes (the usual case): vectorized
                        s_cuts, t_cuts = equal_text_cuts(pieces, teacher_pieces)
                        groups.extend(zip([turn.start + c for c in s_cuts[:-1]], [turn.start + c for c in s_cuts[1:]],
                                          [offset + c for c in t_cuts[:-1]], [offset + c for c in t_cuts[1:]]))
                    else:
                        for group in align_pieces(pieces, teacher_pieces):
                            s0, s1 = turn.start + group.s_start, turn.start + group.s_end
                            if group.aligned:
                                groups.append((s0, s1, offset + group.t_start, offset + group.t_end))
                            else:
                                unaligned.extend(range(s0, s1))
            scored.extend(range(len(completion), len(completion) + len(teacher_content)))
            completion.extend(teacher_content)
            end = self.end_of_glued_turn if followed else self.end_of_turn
            if ended:
                if end:  # the student ended its turn: the teacher's probability of ending it there
                    groups.append((turn.end - 1, turn.end, len(completion), len(completion) + len(end)))
                    scored.extend(range(len(completion), len(completion) + len(end)))
                    completion.extend(end)
                else:
                    unaligned.append(turn.end - 1)
            if followed:
                completion.extend(self.formatter(turn.observation or "", ended and bool(end)))
        return _Plan(prompt + completion, len(prompt), scored, groups, unaligned)

    # ------------------------------------------------------------------ scoring
    def _score_plans(self, plans: list[_Plan], device) -> torch.Tensor:
        """Teacher log-probs of each plan's teacher completion tokens, one scorer call for all ``plans``."""
        width = max(len(p.ids) for p in plans)
        completion_width = max(1, max(len(p.ids) - p.prompt_length for p in plans))
        input_ids = torch.full((len(plans), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(plans), width), dtype=torch.long)
        token_mask = torch.zeros((len(plans), completion_width), dtype=torch.long)
        for row, plan in enumerate(plans):
            input_ids[row, :len(plan.ids)] = torch.tensor(plan.ids, dtype=torch.long)
            attention_mask[row, :len(plan.ids)] = 1
            if plan.scored:
                token_mask[row, plan.scored] = 1
        starts = torch.tensor([p.prompt_length for p in plans], dtype=torch.long)
        logps = self.scorer.score(input_ids.to(device), attention_mask.to(device), starts.to(device),
                                  token_mask.to(device))
        return logps.float().cpu()

    def score_trajectories(self, trajectories: Sequence[Trajectory], messages: Sequence[list[dict]], width: int,
                           *, rows_per_call: int = 8, device=None) -> CrossTeacherScores:
        """Span log-probs, span ids and the aligned mask of ``(len(trajectories), width)`` completion tokens.

        ``messages`` are the prompt messages of each trajectory. The teacher scorer is called once per
        ``rows_per_call`` rows (every process calls it equally often when their batch sizes are equal)."""
        device = device if device is not None else torch.device("cpu")
        started = time.perf_counter()
        plans = [self.plan(t, m) for t, m in zip(trajectories, messages)]
        aligning = time.perf_counter() - started
        batch = len(trajectories)
        logps = torch.zeros(batch, width, dtype=torch.float32)
        span_ids = torch.full((batch, width), -1, dtype=torch.long)
        size = max(1, rows_per_call)
        scoring = 0.0
        spans = tokens_in_spans = teacher_tokens_in_spans = 0
        for first in range(0, batch, size):
            chunk = plans[first:first + size]
            begun = time.perf_counter()
            values = self._score_plans(chunk, device)
            scoring += time.perf_counter() - begun
            begun = time.perf_counter()
            for local, plan in enumerate(chunk):
                if not plan.groups:
                    continue
                s0, s1, t0, t1 = torch.tensor(plan.groups, dtype=torch.long).unbind(1)
                t_group, t_positions = _ranges(t0, t1)
                span_logps = torch.zeros(len(plan.groups), dtype=torch.float64).index_add_(
                    0, t_group, values[local].double()[t_positions])  # a one-token span: exactly its value
                s_group, s_positions = _ranges(s0, s1)
                span_ids[first + local, s_positions] = s_group
                logps[first + local, s1 - 1] = span_logps.float()
                spans += len(plan.groups)
                tokens_in_spans += len(s_positions)
                teacher_tokens_in_spans += len(t_positions)
            aligning += time.perf_counter() - begun
        model_tokens = sum(sum(t.assistant_mask) for t in trajectories)
        unaligned = sum(len(p.unaligned) for p in plans)
        stats = {
            "teacher/unaligned_tokens": float(unaligned),
            "teacher/unaligned_ratio": unaligned / max(1, model_tokens),
            "teacher/student_tokens_per_span": tokens_in_spans / max(1, spans),
            "teacher/teacher_tokens_per_span": teacher_tokens_in_spans / max(1, spans),
            "teacher/alignment_seconds": aligning,
            "teacher/scoring_seconds": scoring,
        }
        return CrossTeacherScores(logps.to(device), span_ids.to(device), (span_ids >= 0).to(device), stats)
