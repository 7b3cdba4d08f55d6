r"""Reward functions for math, multiple-choice and code tasks (SOD_SPEC §6), in TRL's signature.

Every reward here is a callable ``fn(prompts, completions, **kwargs) -> list[float | None]`` with a
``__name__``, usable as ``reward_funcs`` in TRL or SOD. Extra dataset columns arrive in ``kwargs``
(``answer``, ``choices``, ``tests``); unknown keyword arguments are ignored. ``None`` means "this
reward does not apply to this row" (the row lacks the column's value), which TRL treats as NaN.

The paper's recipe:

* correct ``+1``, wrong ``-1``: math / science compare the last ``\boxed{...}`` (in the last 300
  characters) with the reference; multiple choice compares the boxed capital letter; code runs the
  final ```` ```python ```` block against the problem's stdin/stdout tests in the sandbox.
* tool-use shaping for wrong answers (``tool_shaping=True``): ``r = min(-0.6, r + 0.1 * (num_turns - 2) / 2)``.
* DAPO overlong penalty (``overlong_buffer=1024``): for a response of ``L`` tokens (tool tokens
  counted) with ``L > max_completion_length - buffer``, add ``-factor * (L - (max_len - buffer)) / buffer``.

``num_turns`` and ``L`` come from ``trajectories=`` (objects with ``.num_turns`` and
``.completion_length``, passed by the SOD trainer); ``L`` can also come from TRL's ``completion_ids``.

Math equivalence uses math-verify by default. math-verify's own timeouts use ``signal.alarm``, which
only works on the main thread; we turn them off and run math-verify in a long-lived helper process
instead, killed and restarted when a comparison passes its deadline (a hung sympy simplification
cannot stall training, and any thread may call the reward).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnswerCheck",
    "CodeTest",
    "RewardFunction",
    "MathReward",
    "MultipleChoiceReward",
    "CodeReward",
    "MathVerifier",
    "make_math_reward",
    "make_multiple_choice_reward",
    "make_code_reward",
    "default_reward_funcs",
    "last_boxed",
    "normalize_final_answer",
    "strict_boxed_match",
    "extract_multiple_choice_letter",
    "extract_final_code",
    "parse_tests",
    "outputs_match",
    "tool_use_shaping",
    "overlong_penalty",
    "completion_text",
]

ANSWER_WINDOW_CHARS = 300  # the paper looks for the final box in the last 300 characters


# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Shaping (SOD_SPEC §6)
# --------------------------------------------------------------------------------------------


def tool_use_shaping(reward: float, num_turns: int) -> float:
    """The paper's shaping for wrong answers: ``min(-0.6, r + 0.1 * (num_turns - 2) / 2)``.

    More tool turns make a wrong answer less negative, capped at -0.6 (never as good as a right one).
    """
    return min(-0.6, reward + 0.1 * (num_turns - 2) / 2)


def overlong_penalty(length: int, max_completion_length: int, buffer: int = 1024, factor: float = 1.0) -> float:
    """DAPO's soft overlong penalty: 0 up to ``max_len - buffer``, then ``-factor * (L - (max_len - buffer)) / buffer``."""
    threshold = max_completion_length - buffer
    if length <= threshold:
        return 0.0
    return -factor * (length - threshold) / buffer


# --------------------------------------------------------------------------------------------
# math-verify with our own deadline
# --------------------------------------------------------------------------------------------

# Runs in the helper process: stdlib + math_verify only, no import of sod_trainer (so nothing heavy
# is loaded and the main script is never re-imported, unlike multiprocessing's spawn).
_WORKER_SOURCE = r'''
import json, os, sys
protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # anything printed by sympy goes to stderr, never into the protocol
sys.stdout = sys.stderr
import logging
logging.getLogger("math_verify").setLevel(logging.ERROR)
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig
PRED_CONFIG = [LatexExtractionConfig(
    normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                             boxed="all", units=True),
    boxed_match_priority=0, try_extract_without_anchor=False)]
gold_cache = {}
protocol.write("ready\n")
for line in sys.stdin:
    request = json.loads(line)
    try:
        gold = gold_cache.get(request["gold"])
        if gold is None:
            gold = parse("\\boxed{" + request["gold"] + "}", parsing_timeout=None)
            if len(gold_cache) < 10000:
                gold_cache[request["gold"]] = gold
        pred = parse("\\boxed{" + request["pred"] + "}", extraction_config=PRED_CONFIG, parsing_timeout=None)
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
        reply = {"ok": ok, "gold_parsed": bool(gold)}
    except BaseException as error:  # noqa: BLE001 - any failure is "not verified"
        reply = {"ok": False, "gold_parsed": False, "error": repr(error)[:200]}
    protocol.write(json.dumps(reply) + "\n")
'''


class MathVerifier:
    """Checks ``pred`` against ``gold`` with math-verify, each comparison under a deadline.

    math-verify runs in one long-lived helper process (started on first use, ~0.5 s); a comparison
    that passes ``timeout_s`` kills it (counted as not equivalent) and the next call starts a fresh
    one. Thread-safe. ``timeout_s=None`` runs math-verify in this process with no deadline at all.
    """

    def __init__(self, timeout_s: float | None = 10.0):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._buffer = b""
        self.timeouts = 0
        self._timed_out = False
        self._finalizer: weakref.finalize | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (TRL may send reward functions to a spawned worker): the helper process stays here.
        return {"timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["timeout_s"])

    def equivalent(self, gold: str, pred: str) -> bool:
        """Whether the answer ``pred`` (a box's content) is mathematically equal to ``gold``."""
        if self.timeout_s is None:
            return _verify_inline(gold, pred)
        request = (json.dumps({"gold": gold, "pred": pred}) + "\n").encode()
        with self._lock:
            for attempt in range(2):  # a helper that died on its own (not a timeout) is restarted once
                process = self._ensure_started()
                try:
                    process.stdin.write(request)
                    process.stdin.flush()
                    line = self._read_line(process, self.timeout_s)
                except (BrokenPipeError, OSError):
                    line = None
                if line is None:
                    if self._timed_out:
                        self.timeouts += 1
                        self._kill()
                        return False
                    self._kill()
                    continue
                return bool(json.loads(line).get("ok"))
        return False

    def close(self) -> None:
        """Stop the helper process (it is also stopped when this object is garbage collected)."""
        with self._lock:
            self._kill()

    # -- internals --
    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._kill()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._process = process
        self._buffer = b""
        self._finalizer = weakref.finalize(self, _kill_process, process)
        if self._read_line(process, max(60.0, self.timeout_s or 0)) != b"ready":
            self._kill()
            raise RuntimeError(
                "The math-verify helper process did not start. Check that `math-verify` is installed "
                f"for {sys.executable} (pip install 'math-verify>=0.7')."
            )
        return process

    def _read_line(self, process: subprocess.Popen, timeout_s: float) -> bytes | None:
        import time

        self._timed_out = False
        deadline = time.monotonic() + timeout_s
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out = True
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the helper exited
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.strip()

    def _kill(self) -> None:
        if self._process is not None:
            _kill_process(self._process)
            if self._finalizer is not None:
                self._finalizer.detach()
        self._process = None
        self._buffer = b""


def _kill_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, 9)
        except (ProcessLookupError, PermissionError):
            process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def _verify_inline(gold: str, pred: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.parser import NormalizationConfig

    config = [LatexExtractionConfig(
        normalization_config=NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                                                 boxed="all", units=True),
        boxed_match_priority=0, try_extract_without_anchor=False)]
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    return bool(gold_parsed) and bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


# --------------------------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------------------------


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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


class MathReward(RewardFunction):
    r"""+1 if the last ``\boxed{}`` (in the last 300 characters) equals the ``answer`` column, else -1.

    ``strict=False`` (default): equal means math-verify equivalent (``\frac{1}{2}`` = ``0.5``,
    ``5\text{ cm}`` = ``5``), after a fast exact check on normalized strings. ``strict=True``: the
    paper's exact match after normalization only. Rows whose answer is missing get ``None``.
    """

    __name__ = "math_reward"

    def __init__(
        self,
        *,
        strict: bool = False,
        answer_column: str = "answer",
        answer_window_chars: int | None = ANSWER_WINDOW_CHARS,
        verify_timeout_s: float | None = 10.0,
        **shaping: Any,
    ):
        super().__init__(**shaping)
        self.strict = strict
        self.answer_column = answer_column
        self.answer_window_chars = answer_window_chars
        self.verifier = None if strict else MathVerifier(verify_timeout_s)

    def check(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[AnswerCheck]:
        checks = []
        for text, row in zip(completions, rows):
            reference = row.get(self.answer_column)
            if _missing(reference):
                checks.append(AnswerCheck(None, detail=f"no {self.answer_column!r}"))
                continue
            boxed = last_boxed(text, self.answer_window_chars)
            if boxed is None:
                checks.append(AnswerCheck(False, None, "no complete \\boxed{} at the end"))
                continue
            gold = _reference_text(reference)
            answer = normalize_final_answer(boxed)
            if answer and answer == normalize_final_answer(gold):
                checks.append(AnswerCheck(True, answer, "exact"))
            elif self.strict or not boxed.strip():
                checks.append(AnswerCheck(False, answer, "mismatch"))
            else:
                correct = self.verifier.equivalent(gold, boxed)
                checks.append(AnswerCheck(correct, answer, "math-verify"))
        return checks


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
        reference = row.get(self.answer_column)
        if _missing(reference):
            return None
        text = str(reference).strip()
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
        checks = []
        for text, row in zip(completions, rows):
            expected = self.reference_letter(row)
            if expected is None:
                checks.append(AnswerCheck(None, detail=f"no {self.answer_column!r}"))
                continue
            letter = extract_multiple_choice_letter(text, self.answer_window_chars)
            checks.append(AnswerCheck(letter == expected, letter, "no boxed letter" if letter is None else ""))
        return checks


# --------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------


@dataclass
class CodeTest:
    """One test: the program's stdin and expected stdout (``kind="stdin"``), or, for LeetCode-style
    problems (``kind="functional"``), one JSON value per input line passed to ``Solution().<fn_name>``."""

    input: str
    output: str
    kind: str = "stdin"
    fn_name: str | None = None


def parse_tests(tests: Any) -> list[CodeTest]:
    """Accept the common test formats: a JSON string or object that is a list of ``{"input", "output"}``
    dicts (LiveCodeBench, with ``testtype`` and optional ``fn_name``), or ``{"inputs": [...], "outputs": [...]}``
    (APPS, with optional ``fn_name``)."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as error:
            raise ValueError(f"tests is a string but not JSON ({error}): {tests[:200]!r}") from None
    if isinstance(tests, dict) and "inputs" in tests:
        fn_name = tests.get("fn_name")
        kind = "functional" if fn_name else "stdin"
        return [CodeTest(_as_text(i), _as_text(o), kind, fn_name) for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, dict):
        tests = [tests]
    parsed = []
    for test in tests or []:
        if isinstance(test, CodeTest):
            parsed.append(test)
            continue
        if not isinstance(test, dict) or "input" not in test or "output" not in test:
            raise ValueError(f"Each test needs 'input' and 'output'; got {test!r:.200}.")
        kind = "functional" if test.get("testtype") == "functional" else "stdin"
        parsed.append(CodeTest(_as_text(test["input"]), _as_text(test["output"]), kind, test.get("fn_name")))
    return parsed


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value)
    return json.dumps(value)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def outputs_match(actual: str, expected: str, float_tolerance: float = 1e-6) -> bool:
    """Judge stdout: equal line by line ignoring trailing whitespace and trailing blank lines; failing
    that, equal token by token with numbers compared to ``float_tolerance`` (absolute or relative)."""
    def lines(text: str) -> list[str]:
        result = [line.rstrip() for line in text.strip("\n").splitlines()]
        while result and not result[-1]:
            result.pop()
        return result

    if lines(actual) == lines(expected):
        return True
    actual_tokens, expected_tokens = actual.split(), expected.split()
    if len(actual_tokens) != len(expected_tokens) or not expected_tokens:
        return False
    for got, want in zip(actual_tokens, expected_tokens):
        if got == want:
            continue
        if not (_is_float(got) and _is_float(want)):
            return False
        if not math.isclose(float(got), float(want), rel_tol=float_tolerance, abs_tol=float_tolerance):
            return False
    return True


_PROGRAM_WRAPPER = '''\
import sys as __sod_sys, io as __sod_io
{stdin_setup}__sod_globals = {{"__name__": "__main__", "__builtins__": __builtins__}}
try:
    exec(compile({source!r}, "<solution>", "exec"), __sod_globals)
{functional_call}except SystemExit as __sod_exit:
    if __sod_exit.code not in (None, 0):
        raise
finally:
    __sod_sys.stdout.flush()
'''

_FUNCTIONAL_CALL = '''\
    import json as __sod_json
    __sod_args = [__sod_json.loads(__l) for __l in {input!r}.split("\\n") if __l.strip()]
    __sod_target = __sod_globals["Solution"]() if "Solution" in __sod_globals else None
    __sod_fn = getattr(__sod_target, {fn_name!r}) if __sod_target is not None else __sod_globals[{fn_name!r}]
    print(__sod_json.dumps(__sod_fn(*__sod_args)))
'''

# Without stdin support the sandbox gets the input inside the program, which it may hand to the
# interpreter as one command-line argument (Linux caps one at 128 KiB).
_MAX_EMBEDDED_PROGRAM = 120_000


def build_test_program(code: str, test: CodeTest, embed_stdin: bool) -> str:
    """The program run for one test: the solution executed as ``__main__`` (so a trailing bare
    expression is not echoed and ``exit()`` is fine), stdin replaced by the test input when
    ``embed_stdin``, and for functional tests the call of ``fn_name`` with the JSON arguments."""
    stdin_setup = ""
    if embed_stdin and test.kind == "stdin":
        stdin_setup = (f"__sod_sys.stdin = __sod_io.TextIOWrapper(__sod_io.BytesIO({test.input.encode()!r}), "
                       "encoding='utf-8')\n")
    functional_call = ""
    if test.kind == "functional":
        if not test.fn_name:
            raise ValueError("A functional test needs fn_name (the method of class Solution to call).")
        functional_call = _FUNCTIONAL_CALL.format(input=test.input, fn_name=test.fn_name)
    return _PROGRAM_WRAPPER.format(stdin_setup=stdin_setup, source=code, functional_call=functional_call)


@dataclass
class TestOutcome:
    """What happened to one test: ``status`` is passed, wrong_answer, timeout, runtime_error or not_run."""

    status: str
    detail: str = ""

    __test__ = False  # not a pytest class


def run_code_tests(code: str, tests: Sequence[CodeTest], sandbox: Any, stop_at_first_failure: bool = True) -> list[TestOutcome]:
    """Run ``code`` on each test in the sandbox, one fresh process per test."""
    accepts_stdin = "stdin" in inspect.signature(sandbox.run).parameters
    outcomes: list[TestOutcome] = []
    for test in tests:
        outcome = _run_one_test(code, test, sandbox, accepts_stdin)
        outcomes.append(outcome)
        if stop_at_first_failure and outcome.status != "passed":
            outcomes.extend(TestOutcome("not_run") for _ in range(len(tests) - len(outcomes)))
            break
    return outcomes


def _run_one_test(code: str, test: CodeTest, sandbox: Any, accepts_stdin: bool) -> TestOutcome:
    program = build_test_program(code, test, embed_stdin=not accepts_stdin)
    if not accepts_stdin and len(program.encode()) > _MAX_EMBEDDED_PROGRAM:
        return TestOutcome("runtime_error", f"program with embedded test input is {len(program.encode())} bytes, "
                           "over the command-line limit; needs a sandbox whose run() accepts stdin=")
    if accepts_stdin and test.kind == "stdin":
        result = sandbox.run(program, stdin=test.input)
    else:
        result = sandbox.run(program)
    if result.timed_out:
        return TestOutcome("timeout")
    if result.exit_code != 0:
        return TestOutcome("runtime_error", (result.stderr or "")[-300:])
    if test.kind == "functional":
        try:
            got = json.loads(result.stdout.strip().splitlines()[-1])
            want = json.loads(test.output)
        except (json.JSONDecodeError, IndexError):
            return TestOutcome("wrong_answer", result.stdout[-200:])
        return TestOutcome("passed") if _json_equal(got, want) else TestOutcome("wrong_answer", result.stdout[-200:])
    if outputs_match(result.stdout, test.output):
        return TestOutcome("passed")
    return TestOutcome("wrong_answer", result.stdout[-200:])


def _json_equal(got: Any, want: Any) -> bool:
    if isinstance(got, float) or isinstance(want, float):
        try:
            return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_json_equal(a, b) for a, b in zip(got, want))
    return got == want


class CodeReward(RewardFunction):
    """+1 if the final ```` ```python ```` block passes every test of the ``tests`` column, else -1.

    Each test runs in a fresh sandboxed process (``timeout_s`` per test), stopping at the first
    failure; completions are scored in parallel (``max_workers`` threads, each waiting on its own
    process). No code block, a wrong answer, a crash or a timeout all score -1. Rows without tests
    get ``None``.
    """

    __name__ = "code_reward"
    supports_majority_vote = False

    def __init__(self, *, tests_column: str = "tests", timeout_s: float = 10.0, max_workers: int | None = None,
                 sandbox: Any = None, **shaping: Any):
        super().__init__(**shaping)
        self.tests_column = tests_column
        self.timeout_s = timeout_s
        self.max_workers = max_workers or max(1, min(8, os.cpu_count() or 1))
        self._sandbox = sandbox

    @property
    def sandbox(self) -> Any:
        if self._sandbox is None:
            from .environments.sandbox import PythonSandbox, SandboxConfig

            self._sandbox = PythonSandbox(SandboxConfig(timeout_s=self.timeout_s))
        return self._sandbox

    def check(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[AnswerCheck]:
        def one(item: tuple[str, dict[str, Any]]) -> AnswerCheck:
            text, row = item
            raw = row.get(self.tests_column)
            if raw is None or (isinstance(raw, (list, str)) and len(raw) == 0):
                return AnswerCheck(None, detail=f"no {self.tests_column!r}")
            tests = parse_tests(raw)
            if not tests:
                return AnswerCheck(None, detail="empty test list")
            code = extract_final_code(text)
            if code is None:
                return AnswerCheck(False, None, "no final ```python block")
            outcomes = run_code_tests(code, tests, self.sandbox)
            failed = next((outcome for outcome in outcomes if outcome.status != "passed"), None)
            if failed is None:
                return AnswerCheck(True, None, f"passed {len(tests)} tests")
            return AnswerCheck(False, None, f"{failed.status}: {failed.detail}"[:300])

        items = list(zip(completions, rows))
        if len(items) <= 1 or self.max_workers == 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(one, items))


# --------------------------------------------------------------------------------------------
# Factories and defaults
# --------------------------------------------------------------------------------------------


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
