"""Multiple-choice reward: the boxed capital letter against the reference letter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .answers import ANSWER_WINDOW_CHARS, extract_multiple_choice_letter, reference_text
from .base import AnswerCheck, RewardFunction

class MultipleChoiceReward(RewardFunction):
    r"""+1 if the boxed capital letter equals the reference letter, else -1.

    The reference is the ``answer`` column: a letter, or the text of one of the ``choices`` (then
    mapped to its letter, A for the first choice). Rows without a reference get ``None``.
    """

    __name__ = "multiple_choice_reward"

    def __init__(self, *, answer_column: str = "answer", choices_column: str = "choices",
                 answer_window_chars: int | None = ANSWER_WINDOW_CHARS, **shaping: Any):
        super().__init__(**shaping)
        self.answer_column = answer_column
        self.choices_column = choices_column
        self.answer_window_chars = answer_window_chars

    def reference_letter(self, row: dict[str, Any]) -> str | None:
        reference = reference_text(row.get(self.answer_column), column=self.answer_column, reward=self.__name__)
        if reference is None:
            return None
        text = reference.strip()
        letter = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", text)
        if letter:
            return letter.group(1).upper()
        choices = row.get(self.choices_column)
        if choices:
            for position, choice in enumerate(choices):
                if str(choice).strip() == text:
                    return chr(ord("A") + position)
        raise ValueError(
            f"{self.__name__}: the reference {reference!r} is neither a letter nor one of the choices "
            f"{choices!r}. Give the correct letter (A, B, ...) in the {self.answer_column!r} column."
        )

    def check(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[AnswerCheck]:
        self._warn_if_column_absent(self.answer_column, rows)
        checks = []
        for text, row in zip(completions, rows):
            expected = self.reference_letter(row)
            if expected is None:
                checks.append(AnswerCheck(None, detail=f"no {self.answer_column!r}"))
                continue
            letter = extract_multiple_choice_letter(text, self.answer_window_chars)
            checks.append(AnswerCheck(letter == expected, letter, "no boxed letter" if letter is None else ""))
        return checks
