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

# Private helpers are re-exported too: all of these were importable from the former single module.
from .answers import (
    _LETTER_WRAPPERS,
    _PYTHON_BLOCK,
    _REMOVED_EXPRESSIONS,
    _SUBSTITUTIONS,
    ANSWER_WINDOW_CHARS,
    _missing,
    _reference_text,
    completion_text,
    extract_final_code,
    extract_multiple_choice_letter,
    last_boxed,
    normalize_final_answer,
    reference_text,
    strict_boxed_match,
)
from .base import AnswerCheck, RewardFunction, _rows_from_columns
from .choice import MultipleChoiceReward
from .code import (
    _FUNCTIONAL_CALL,
    _MAX_EMBEDDED_PROGRAM,
    _PROGRAM_WRAPPER,
    CodeReward,
    CodeTest,
    TestOutcome,
    _as_text,
    _is_float,
    _json_equal,
    _run_one_test,
    build_test_program,
    outputs_match,
    parse_tests,
    run_code_tests,
)
from .factories import (
    _looks_like_letters,
    _pick,
    default_reward_funcs,
    make_code_reward,
    make_math_reward,
    make_multiple_choice_reward,
)
from .math import _WORKER_SOURCE, MathReward, MathVerifier, _kill_process, _verify_inline
from .shaping import overlong_penalty, tool_use_shaping

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
    "reference_text",
]
