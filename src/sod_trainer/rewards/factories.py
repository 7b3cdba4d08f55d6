"""Reward factories (make_*_reward) and default_reward_funcs, which picks rewards for a dataset's columns."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from .answers import _missing
from .base import RewardFunction
from .choice import MultipleChoiceReward
from .code import CodeReward
from .math import MathReward

def make_math_reward(
    strict: bool = False,
    tool_shaping: bool = False,
    overlong_buffer: int | None = None,
    max_completion_length: int | None = None,
    overlong_factor: float = 1.0,
    answer_column: str = "answer",
    verify_timeout_s: float | None = 10.0,
) -> MathReward:
    r"""Math / science reward: last ``\boxed{}`` vs ``answer``; math-verify equivalence, or the paper's strict match."""
    return MathReward(strict=strict, answer_column=answer_column, verify_timeout_s=verify_timeout_s,
                      tool_shaping=tool_shaping, overlong_buffer=overlong_buffer,
                      max_completion_length=max_completion_length, overlong_factor=overlong_factor)


def make_multiple_choice_reward(
    tool_shaping: bool = False,
    overlong_buffer: int | None = None,
    max_completion_length: int | None = None,
    overlong_factor: float = 1.0,
    answer_column: str = "answer",
    choices_column: str = "choices",
) -> MultipleChoiceReward:
    """Multiple-choice reward: the boxed capital letter vs the reference letter."""
    return MultipleChoiceReward(answer_column=answer_column, choices_column=choices_column,
                                tool_shaping=tool_shaping, overlong_buffer=overlong_buffer,
                                max_completion_length=max_completion_length, overlong_factor=overlong_factor)


def make_code_reward(
    timeout_s: float = 10.0,
    tool_shaping: bool = False,
    overlong_buffer: int | None = None,
    max_completion_length: int | None = None,
    overlong_factor: float = 1.0,
    tests_column: str = "tests",
    max_workers: int | None = None,
    sandbox: Any = None,
) -> CodeReward:
    """Code reward: the final ```` ```python ```` block against the row's stdin/stdout tests in the sandbox."""
    return CodeReward(tests_column=tests_column, timeout_s=timeout_s, max_workers=max_workers, sandbox=sandbox,
                      tool_shaping=tool_shaping, overlong_buffer=overlong_buffer,
                      max_completion_length=max_completion_length, overlong_factor=overlong_factor)


def _looks_like_letters(values: Iterable[Any]) -> bool:
    seen = False
    for value in values:
        if _missing(value):
            continue
        if not re.fullmatch(r"\(?[A-Z]\)?", str(value).strip()):
            return False
        seen = True
    return seen


def default_reward_funcs(dataset_columns: Any, **options: Any) -> list[RewardFunction]:
    """Pick the rewards for a dataset: code for ``tests``; multiple choice for ``choices`` or letter
    answers; math for ``answer``. ``dataset_columns`` is a ``datasets.Dataset`` (its first rows are
    looked at to tell letter answers from math answers) or a list of column names. ``options`` (e.g.
    ``tool_shaping=True``, ``overlong_buffer=1024, max_completion_length=20480``) go to every reward.
    """
    column_names = list(getattr(dataset_columns, "column_names", dataset_columns))
    rewards: list[RewardFunction] = []
    if "answer" in column_names or "choices" in column_names:
        letters = False
        if "choices" in column_names:
            letters = True
        elif hasattr(dataset_columns, "column_names"):
            sample = dataset_columns.select(range(min(len(dataset_columns), 64)))["answer"]
            letters = _looks_like_letters(sample)
        if letters:
            rewards.append(make_multiple_choice_reward(**_pick(options, make_multiple_choice_reward)))
        else:
            rewards.append(make_math_reward(**_pick(options, make_math_reward)))
    if "tests" in column_names:
        rewards.append(make_code_reward(**_pick(options, make_code_reward)))
    if not rewards:
        raise ValueError(
            f"No default reward for columns {column_names}: expected 'answer' (math), 'choices' or letter "
            "answers (multiple choice) or 'tests' (code). Pass reward_funcs explicitly."
        )
    return rewards


def _pick(options: dict[str, Any], factory: Callable[..., Any]) -> dict[str, Any]:
    accepted = inspect.signature(factory).parameters
    return {key: value for key, value in options.items() if key in accepted}
