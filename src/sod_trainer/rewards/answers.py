"""Answer extraction and normalisation: completion text, last boxed answer, letters and final code."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from typing import Any

ANSWER_WINDOW_CHARS = 300  # the paper looks for the final box in the last 300 characters


def completion_text(completion: Any) -> str:
    """The completion as one string: TRL passes a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Iterable):
        return "\n".join(completion_text(part) for part in completion)
    return str(completion)


def last_boxed(text: str, window: int | None = ANSWER_WINDOW_CHARS) -> str | None:
    r"""Content of the last complete ``\boxed{...}`` (or ``\fbox{...}``) in the last ``window`` characters.

    Braces are matched, so ``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``. Returns ``None`` when there
    is no box or the last box is never closed (a malformed answer counts as no answer).
    """
    if window is not None:
        text = text[-window:]
    starts = [match.end() for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for position in range(start, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return None


# Minerva-style answer normalization (Lewkowycz et al., 2022), as used by DAPO's math reward.
_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
_REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
    "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
]


def normalize_final_answer(answer: str) -> str:
    r"""Normalize a final answer for exact comparison: drop ``x =``, units words, ``\text``, spaces, ``$``.

    ``normalize_final_answer("x = \\frac12") == "\\frac{1}{2}"``; ``"1,000" -> "1000"``.
    """
    answer = str(answer).split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in _REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer.strip()


def strict_boxed_match(text: str, reference: Any, window: int | None = ANSWER_WINDOW_CHARS) -> bool:
    r"""The paper's rule: the last ``\boxed{}`` in the last ``window`` characters equals the reference after normalization."""
    boxed = last_boxed(text, window)
    if boxed is None:
        return False
    expected = normalize_final_answer(_reference_text(reference))
    return bool(expected) and normalize_final_answer(boxed) == expected


def _reference_text(reference: Any) -> str:
    """A reference answer as text; a boxed reference is unwrapped."""
    text = str(reference).strip()
    boxed = last_boxed(text, window=None)
    return boxed if boxed is not None else text


_LETTER_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathit|textit)\s*\{([^{}]*)\}")


def extract_multiple_choice_letter(text: str, window: int | None = ANSWER_WINDOW_CHARS) -> str | None:
    r"""The capital letter in the last ``\boxed{}``: ``\boxed{B}``, ``\boxed{(B)}``, ``\boxed{\text{B}}``, ``\boxed{B.}``.

    Anything else in the box (a lowercase letter, a number, ``B and C``, ``B. 42 kg``) is not a letter
    answer and gives ``None``.
    """
    boxed = last_boxed(text, window)
    if boxed is None:
        return None
    content = boxed
    while True:
        unwrapped = _LETTER_WRAPPERS.sub(r"\1", content)
        if unwrapped == content:
            break
        content = unwrapped
    content = content.strip().strip("$").strip()
    match = re.fullmatch(r"\(?\s*([A-Z])\s*\)?\s*[.:]?", content)
    return match.group(1) if match else None


_PYTHON_BLOCK = re.compile(r"```(?:python|py|python3)[ \t]*\n(.*?)```", re.DOTALL)


def extract_final_code(text: str) -> str | None:
    """The final ```` ```python ```` block after the reasoning.

    When the completion has a ``</think>`` tag, only what follows the last one is searched (code in
    the reasoning is a draft, not the answer); otherwise the whole completion. ``None`` if no block.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    blocks = _PYTHON_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def reference_text(value: Any, *, column: str = "answer", reward: str = "reward") -> str | None:
    """A dataset's reference answer as text, or ``None`` when the row has none (``None``, NaN, blank).

    Strings are kept; numbers are written out (``42`` and ``42.0`` give ``"42"``, ``0.5`` gives ``"0.5"``), so
    an integer or float ``answer`` column works as it is. Anything else (a list, a dict, a bool) raises
    ``ValueError`` naming the reward, the column, the value and the fix: there is no single right way to
    compare a completion with it.
    """
    if _missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return str(int(value))
        if isinstance(value, numbers.Real):
            number = float(value)
            return str(int(number)) if number.is_integer() else repr(number)
        return str(value)
    raise ValueError(
        f"{reward}: the reference in column {column!r} is {value!r:.80} (type {type(value).__name__}); it must be a "
        f"string or a number. Make the column hold the one accepted answer (for a list of them, e.g. "
        f"dataset.map(lambda row: {{{column!r}: str(row[{column!r}][0])}})), or pass a reward function of your "
        "own that reads this type."
    )


def _missing(value: Any) -> bool:
    """Whether a reference value is absent (``None``, NaN or blank)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())
