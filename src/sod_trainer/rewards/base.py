"""The reward base class: TRL's call signature, row assembly from columns, shaping of right/wrong."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .answers import completion_text
from .shaping import overlong_penalty, tool_use_shaping

logger = logging.getLogger(__name__)


@dataclass
class AnswerCheck:
    """Outcome of checking one completion: ``correct`` (``None`` if the row has no reference),
    ``answer`` (the extracted answer, normalized, for majority voting; ``None`` when there is none),
    ``detail`` (why, for logs)."""

    correct: bool | None
    answer: str | None = None
    detail: str = ""


class RewardFunction:
    """Base: ``check`` decides right or wrong per completion; ``__call__`` turns that into the shaped reward.

    Subclasses implement :meth:`check`. Shaping options (all off by default):
    ``tool_shaping`` applies the paper's shaping to wrong answers (needs ``trajectories=`` with
    ``.num_turns``, or a ``num_turns`` column); ``overlong_buffer`` (e.g. 1024) with
    ``max_completion_length`` adds DAPO's overlong penalty (needs ``trajectories=`` with
    ``.completion_length``, or TRL's ``completion_ids``).
    """

    __name__ = "reward"
    supports_majority_vote = True

    def __init__(
        self,
        *,
        tool_shaping: bool = False,
        overlong_buffer: int | None = None,
        overlong_factor: float = 1.0,
        max_completion_length: int | None = None,
        correct_reward: float = 1.0,
        wrong_reward: float = -1.0,
        name: str | None = None,
    ):
        if overlong_buffer is not None:
            if overlong_buffer <= 0:
                raise ValueError(f"overlong_buffer must be a positive number of tokens, got {overlong_buffer}.")
            if max_completion_length is None:
                raise ValueError(
                    "overlong_buffer needs max_completion_length (the response budget in tokens, tool "
                    "tokens included), e.g. make_math_reward(overlong_buffer=1024, max_completion_length=20480)."
                )
            if max_completion_length <= overlong_buffer:
                raise ValueError(
                    f"max_completion_length ({max_completion_length}) must exceed overlong_buffer ({overlong_buffer})."
                )
        self.tool_shaping = tool_shaping
        self.overlong_buffer = overlong_buffer
        self.overlong_factor = overlong_factor
        self.max_completion_length = max_completion_length
        self.correct_reward = correct_reward
        self.wrong_reward = wrong_reward
        if name is not None:
            self.__name__ = name

    def check(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[AnswerCheck]:
        """Right or wrong for each completion text, given its dataset row."""
        raise NotImplementedError

    def _warn_if_column_absent(self, column: str, rows: Sequence[dict[str, Any]]) -> None:
        """Warn (once per reward object) when no row carries ``column``: every completion would get ``None``."""
        if rows and not any(column in row for row in rows) and not getattr(self, "_warned_absent", False):
            self._warned_absent = True
            logger.warning(
                "%s: no %r column reached the reward (it got %s), so every completion gets no reward (None). "
                "Rename the dataset column to %r, or point the reward at yours (e.g. "
                "make_math_reward(answer_column='solution')).", self.__name__, column,
                sorted(rows[0]) or "no columns", column)

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any) -> list[float | None]:
        texts = [completion_text(completion) for completion in completions]
        rows = _rows_from_columns(kwargs, len(texts))
        checks = self.check(texts, rows)
        trajectories = kwargs.get("trajectories")
        rewards: list[float | None] = []
        for index, check in enumerate(checks):
            if check.correct is None:
                rewards.append(None)
                continue
            reward = self.correct_reward if check.correct else self.wrong_reward
            if self.tool_shaping and not check.correct:
                reward = tool_use_shaping(reward, self._num_turns(index, trajectories, kwargs))
            if self.overlong_buffer is not None:
                reward += overlong_penalty(self._length(index, trajectories, kwargs), self.max_completion_length,
                                           self.overlong_buffer, self.overlong_factor)
            rewards.append(reward)
        return rewards

    def _num_turns(self, index: int, trajectories: Any, kwargs: dict[str, Any]) -> int:
        if trajectories is not None:
            return int(trajectories[index].num_turns)
        if kwargs.get("num_turns") is not None:
            return int(kwargs["num_turns"][index])
        raise ValueError(
            f"{self.__name__}: tool_shaping needs the number of assistant turns per completion; pass "
            "trajectories= (the SOD trainer does) or a `num_turns` column, or set tool_shaping=False."
        )

    def _length(self, index: int, trajectories: Any, kwargs: dict[str, Any]) -> int:
        if trajectories is not None:
            return int(trajectories[index].completion_length)
        if kwargs.get("completion_ids") is not None:
            return len(kwargs["completion_ids"][index])
        raise ValueError(
            f"{self.__name__}: the overlong penalty needs each completion's length in tokens; pass "
            "trajectories= (the SOD trainer does) or completion_ids= (TRL does), or set overlong_buffer=None."
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__}>"


def _rows_from_columns(kwargs: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Turn TRL's column lists (``answer=[...]``) into one dict per completion; non-list kwargs are skipped."""
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for key, values in kwargs.items():
        if key in ("trajectories", "trainer_state", "log_extra", "log_metric", "environments", "completion_ids"):
            continue
        if isinstance(values, (list, tuple)) and len(values) == count:
            for row, value in zip(rows, values):
                row[key] = value
    return rows
