"""Reward functions on hand-written cases (SOD_SPEC §6)."""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass

import pytest

from sod_trainer.rewards import (
    CodeReward,
    MathVerifier,
    build_test_program,
    default_reward_funcs,
    extract_final_code,
    extract_multiple_choice_letter,
    last_boxed,
    make_code_reward,
    make_math_reward,
    make_multiple_choice_reward,
    normalize_final_answer,
    outputs_match,
    overlong_penalty,
    parse_tests,
    strict_boxed_match,
    tool_use_shaping,
)


@dataclass
class FakeTrajectory:
    num_turns: int = 1
    num_tool_calls: int = 0
    completion_length: int = 10
    truncated: bool = False


@pytest.fixture(scope="module")
def math_reward():
    reward = make_math_reward()
    yield reward
    reward.verifier.close()


@pytest.fixture(scope="module")
def strict_reward():
    return make_math_reward(strict=True)


# ---------------------------------------------------------------- boxes


def test_last_boxed_matches_nested_braces_and_takes_the_last_box():
    assert last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{5} no wait \boxed{7}") == "7"
    assert last_boxed(r"\fbox{3}") == "3"


def test_last_boxed_rejects_missing_unclosed_and_out_of_window_boxes():
    assert last_boxed("the answer is 42") is None
    assert last_boxed(r"the answer is \boxed{42") is None
    assert last_boxed(r"\boxed{42}" + "x" * 400) is None  # only the last 300 characters count
    assert last_boxed(r"\boxed{42}" + "x" * 400, window=None) == "42"


def test_normalize_final_answer_minerva_rules():
    assert normalize_final_answer(r"x = \frac12") == r"\frac{1}{2}"
    assert normalize_final_answer("1,000") == "1000"
    assert normalize_final_answer(r"5\text{ cm}") == "5"
    assert normalize_final_answer(r"30^\circ") == "30"
    assert normalize_final_answer(r" 42 ") == "42"


# ---------------------------------------------------------------- math


@pytest.mark.parametrize(
    "completion, answer",
    [
        (r"Thus \boxed{\frac{1}{2}}.", "0.5"),
        (r"Thus \boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{ 42 }", "42"),
        (r"\boxed{5\text{ cm}}", "5"),
        (r"\boxed{5 \mathrm{cm}}", "5"),
        (r"\boxed{1+x}", "x+1"),
        (r"\boxed{1000}", "1,000"),
        (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"first \boxed{5}, on reflection \boxed{7}", "7"),
        (r"\boxed{42}", 42),  # integer reference (AIME)
        (r"\boxed{7}", r"\boxed{7}"),  # boxed reference
    ],
)
def test_math_reward_accepts_equivalent_forms(math_reward, completion, answer):
    assert math_reward(prompts=["q"], completions=[completion], answer=[answer]) == [1.0]


@pytest.mark.parametrize(
    "completion, answer",
    [
        (r"\boxed{0.51}", "0.5"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{x+2}", "x+1"),
        (r"\boxed{5} then \boxed{7}", "5"),  # only the last box counts
        ("The answer is 42.", "42"),  # no box
        (r"The answer is \boxed{42", "42"),  # malformed box
        (r"\boxed{}", "42"),  # empty box
        (r"\boxed{42}" + " and then I kept talking" * 20, "42"),  # box not in the last 300 characters
        (r"\boxed{\frac{1}{2", "0.5"),
    ],
)
def test_math_reward_rejects_wrong_or_malformed_answers(math_reward, completion, answer):
    assert math_reward(prompts=["q"], completions=[completion], answer=[answer]) == [-1.0]


def test_strict_mode_is_exact_after_normalization(strict_reward):
    completions = [r"\boxed{ 42 }", r"\boxed{\frac{1}{2}}", r"\boxed{5\text{ cm}}", r"\boxed{0.5}", "no box"]
    answers = ["42", "0.5", "5", r"\frac{1}{2}", "1"]
    assert strict_reward(prompts=None, completions=completions, answer=answers) == [1.0, -1.0, 1.0, -1.0, -1.0]
    assert strict_reward.verifier is None  # never starts math-verify
    assert strict_boxed_match(r"\boxed{\frac12}", r"\frac{1}{2}")


def test_math_reward_returns_none_for_rows_without_answer_and_ignores_unknown_kwargs(math_reward):
    rewards = math_reward(
        prompts=["a", "b"], completions=[r"\boxed{1}", r"\boxed{1}"], answer=["1", None],
        tests=[None, "[]"], trainer_state=object(), log_metric=print, something_new=123,
    )
    assert rewards == [1.0, None]
    assert math_reward.__name__ == "math_reward"


def test_math_reward_reads_conversational_completions(math_reward):
    completion = [{"role": "assistant", "content": "```python\nprint(6*7)\n```"},
                  {"role": "user", "content": "42"},
                  {"role": "assistant", "content": r"So \boxed{42}."}]
    assert math_reward(prompts=[[]], completions=[completion], answer=["42"]) == [1.0]


def test_math_verify_runs_off_the_main_thread(math_reward):
    results = []
    thread = threading.Thread(target=lambda: results.append(
        math_reward(prompts=None, completions=[r"\boxed{\frac{2}{4}}"], answer=["0.5"])))
    thread.start()
    thread.join(60)
    assert results == [[1.0]]


def test_math_verifier_deadline_kills_a_hung_comparison_and_recovers():
    verifier = MathVerifier(timeout_s=0.5)
    try:
        assert verifier.equivalent("0.5", r"\frac{1}{2}")
        # A hung worker: stop it so it never answers; the deadline must fire and count a timeout.
        import os
        import signal

        os.kill(verifier._process.pid, signal.SIGSTOP)
        assert verifier.equivalent("2", "2+0") is False
        assert verifier.timeouts == 1
        assert verifier.equivalent("3", "1+2")  # a fresh helper was started
    finally:
        verifier.close()


def test_reward_functions_pickle_without_their_helper_process(math_reward):
    clone = pickle.loads(pickle.dumps(math_reward))
    try:
        assert clone(prompts=None, completions=[r"\boxed{0.25}"], answer=[r"\frac14"]) == [1.0]
    finally:
        clone.verifier.close()


# ---------------------------------------------------------------- shaping


def test_tool_use_shaping_formula():
    assert tool_use_shaping(-1.0, 2) == -1.0
    assert tool_use_shaping(-1.0, 6) == pytest.approx(-0.8)
    assert tool_use_shaping(-1.0, 10) == pytest.approx(-0.6)
    assert tool_use_shaping(-1.0, 16) == -0.6  # capped
    assert tool_use_shaping(-1.0, 1) == pytest.approx(-1.05)


def test_overlong_penalty_formula():
    assert overlong_penalty(1000, 4096, 1024) == 0.0
    assert overlong_penalty(3072, 4096, 1024) == 0.0
    assert overlong_penalty(3584, 4096, 1024) == pytest.approx(-0.5)
    assert overlong_penalty(4096, 4096, 1024) == pytest.approx(-1.0)
    assert overlong_penalty(4096, 4096, 1024, factor=0.5) == pytest.approx(-0.5)


def test_shaping_options_compose_and_only_shape_wrong_answers():
    reward = make_math_reward(strict=True, tool_shaping=True, overlong_buffer=1024, max_completion_length=4096)
    trajectories = [FakeTrajectory(num_turns=6, completion_length=100),   # wrong, 6 turns
                    FakeTrajectory(num_turns=6, completion_length=100),   # right: no shaping
                    FakeTrajectory(num_turns=10, completion_length=3584),  # wrong, capped, overlong -0.5
                    FakeTrajectory(num_turns=1, completion_length=4096)]  # right, overlong -1
    rewards = reward(prompts=None, completions=[r"\boxed{1}", r"\boxed{2}", r"\boxed{1}", r"\boxed{2}"],
                     answer=["2"] * 4, trajectories=trajectories)
    assert rewards == pytest.approx([-0.8, 1.0, -1.1, 0.0])


def test_overlong_penalty_falls_back_to_trl_completion_ids():
    reward = make_math_reward(strict=True, overlong_buffer=4, max_completion_length=8)
    assert reward(prompts=None, completions=[r"\boxed{2}"], answer=["2"], completion_ids=[[0] * 6]) == [0.5]


def test_shaping_without_turn_counts_says_what_to_pass():
    reward = make_math_reward(strict=True, tool_shaping=True)
    with pytest.raises(ValueError, match="trajectories="):
        reward(prompts=None, completions=[r"\boxed{1}"], answer=["2"])
    with pytest.raises(ValueError, match="max_completion_length"):
        make_math_reward(overlong_buffer=1024)


# ---------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    "completion, letter",
    [
        (r"\boxed{B}", "B"),
        (r"\boxed{ C }", "C"),
        (r"\boxed{(D)}", "D"),
        (r"\boxed{\text{A}}", "A"),
        (r"\boxed{\textbf{(B)}}", "B"),
        (r"\boxed{B.}", "B"),
        (r"\boxed{A} hmm, no: \boxed{C}", "C"),
        (r"\boxed{b}", None),
        (r"\boxed{B and C}", None),
        (r"\boxed{42}", None),
        ("The answer is B", None),
        (r"\boxed{B", None),
    ],
)
def test_extract_multiple_choice_letter(completion, letter):
    assert extract_multiple_choice_letter(completion) == letter


def test_multiple_choice_reward_letter_and_choice_text_references():
    reward = make_multiple_choice_reward()
    rewards = reward(
        prompts=None,
        completions=[r"\boxed{B}", r"\boxed{A}", r"\boxed{C}", "no box", r"\boxed{B}"],
        answer=["B", "B", "3 m/s", "A", None],
        choices=[["x", "y"], ["x", "y"], ["1 m/s", "2 m/s", "3 m/s"], ["p", "q"], None],
    )
    assert rewards == [1.0, -1.0, 1.0, -1.0, None]


# ---------------------------------------------------------------- code


def test_extract_final_code_takes_the_last_block_after_the_reasoning():
    text = ("<think>draft:\n```python\nprint('draft')\n```\n</think>\n"
            "Tool said 3.\n```python\nprint('a')\n```\nfinal:\n```python\nprint('final')\n```\n")
    assert extract_final_code(text) == "print('final')\n"
    assert extract_final_code("<think>```python\nprint(1)\n```</think> no code after") is None
    assert extract_final_code("no code") is None


def test_parse_tests_formats():
    lcb = parse_tests('[{"input": "1\\n", "output": "2\\n", "testtype": "stdin"}]')
    assert (lcb[0].input, lcb[0].output, lcb[0].kind) == ("1\n", "2\n", "stdin")
    apps = parse_tests({"inputs": ["1\n", "2\n"], "outputs": ["1\n", "4\n"]})
    assert [t.output for t in apps] == ["1\n", "4\n"]
    functional = parse_tests([{"input": "[1, 2]", "output": "3", "testtype": "functional", "fn_name": "add"}])
    assert functional[0].kind == "functional" and functional[0].fn_name == "add"
    with pytest.raises(ValueError, match="input"):
        parse_tests([{"stdin": "1"}])


def test_outputs_match_is_whitespace_and_float_tolerant_but_not_lax():
    assert outputs_match("7 \n\n", "7\n")
    assert outputs_match("1 2\n3\n", "1 2\n3")
    assert outputs_match("0.3333333333\n", "0.333333333")
    assert not outputs_match("8\n", "7\n")
    assert not outputs_match("7 7\n", "7\n")
    assert not outputs_match("", "7")
    assert not outputs_match("0.34\n", "0.333333")


SUM_TESTS = '[{"input": "3 4\\n", "output": "7\\n", "testtype": "stdin"}, {"input": "10 -2\\n", "output": "8\\n", "testtype": "stdin"}]'


def _code(body: str) -> str:
    return f"Reasoning about the task.\n```python\n{body}\n```\n"


@pytest.fixture(scope="module")
def code_reward():
    return make_code_reward(timeout_s=1.5, max_workers=2)


def test_code_reward_passing_wrong_timeout_crash_and_missing(code_reward):
    completions = [
        _code("a, b = map(int, input().split())\nprint(a + b)"),
        _code("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\nexit(0)"),
        _code("a, b = map(int, input().split())\nprint(a * b)"),  # wrong answer
        _code("while True:\n    pass"),  # timeout
        _code("raise RuntimeError('boom')"),  # crash
        _code("import sys\nprint(7)\nsys.exit(3)"),  # non-zero exit
        "I would write some code here.",  # no block
        _code("print(1)"),
    ]
    tests = [SUM_TESTS] * 7 + [None]
    checks = code_reward.check(completions, [{"tests": t} for t in tests])
    assert [c.correct for c in checks] == [True, True, False, False, False, False, False, None]
    assert checks[2].detail.startswith("wrong_answer")
    assert checks[3].detail.startswith("timeout")
    assert checks[4].detail.startswith("runtime_error") and "boom" in checks[4].detail
    assert checks[5].detail.startswith("runtime_error")
    assert code_reward(prompts=None, completions=completions[:3], tests=[SUM_TESTS] * 3) == [1.0, 1.0, -1.0]


def test_code_reward_only_passes_when_every_test_passes(code_reward):
    # Right on the first test (3 4 -> 7), wrong on the second.
    cheat = _code("input()\nprint(7)")
    assert code_reward(prompts=None, completions=[cheat], tests=[SUM_TESTS]) == [-1.0]


def test_code_reward_functional_leetcode_style(code_reward):
    tests = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional", "fn_name": "twoSum"}]
    good = _code("class Solution:\n    def twoSum(self, nums, target):\n"
                 "        seen = {}\n        for i, x in enumerate(nums):\n"
                 "            if target - x in seen:\n                return [seen[target - x], i]\n"
                 "            seen[x] = i")
    bad = _code("class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]")
    assert code_reward(prompts=None, completions=[good, bad], tests=[tests, tests]) == [1.0, -1.0]


def test_test_program_does_not_echo_a_trailing_expression():
    from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig

    program = build_test_program("x = 5\nx", parse_tests([{"input": "", "output": ""}])[0], embed_stdin=True)
    result = PythonSandbox(SandboxConfig(timeout_s=5)).run(program)
    assert result.exit_code == 0 and result.stdout == ""


def test_code_reward_uses_a_given_sandbox_with_stdin_support():
    calls = []

    class RecordingSandbox:
        def run(self, code, stdin=None):
            calls.append(stdin)
            from types import SimpleNamespace

            return SimpleNamespace(stdout="7\n", stderr="", exit_code=0, timed_out=False)

    reward = CodeReward(sandbox=RecordingSandbox(), max_workers=1)
    tests = '[{"input": "3 4\\n", "output": "7\\n"}]'
    assert reward(prompts=None, completions=[_code("print(7)")], tests=[tests]) == [1.0]
    assert calls == ["3 4\n"]


# ---------------------------------------------------------------- defaults


def test_default_reward_funcs_picks_by_columns():
    from datasets import Dataset

    assert [f.__name__ for f in default_reward_funcs(["prompt", "answer"])] == ["math_reward"]
    assert [f.__name__ for f in default_reward_funcs(["prompt", "answer", "choices"])] == ["multiple_choice_reward"]
    assert [f.__name__ for f in default_reward_funcs(["prompt", "tests"])] == ["code_reward"]
    assert [f.__name__ for f in default_reward_funcs(["prompt", "answer", "tests"])] == ["math_reward", "code_reward"]
    letters = Dataset.from_list([{"prompt": "q", "answer": "B"}, {"prompt": "r", "answer": "D"}])
    numbers = Dataset.from_list([{"prompt": "q", "answer": "12"}, {"prompt": "r", "answer": "D"}])
    assert [f.__name__ for f in default_reward_funcs(letters)] == ["multiple_choice_reward"]
    assert [f.__name__ for f in default_reward_funcs(numbers)] == ["math_reward"]
    shaped = default_reward_funcs(["answer"], strict=True, tool_shaping=True, timeout_s=3)
    assert shaped[0].strict and shaped[0].tool_shaping
    with pytest.raises(ValueError, match="reward_funcs"):
        default_reward_funcs(["prompt", "solution"])


def test_code_reward_embeds_stdin_for_a_sandbox_without_stdin_support():
    from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig

    class OldStyleSandbox:  # run(code) only: the input must travel inside the program
        def __init__(self):
            self.inner = PythonSandbox(SandboxConfig(timeout_s=5))

        def run(self, code):
            return self.inner.run(code)

    reward = CodeReward(sandbox=OldStyleSandbox(), max_workers=1)
    good = _code("import sys\nnums = [int(x) for x in sys.stdin.buffer.read().split()]\nprint(sum(nums))")
    wrong = _code("print(input())")
    assert reward(prompts=None, completions=[good, wrong], tests=[SUM_TESTS, SUM_TESTS]) == [1.0, -1.0]
