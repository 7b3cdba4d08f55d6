"""Code reward: test parsing, output comparison, running tests in the sandbox, and CodeReward."""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .answers import extract_final_code
from .base import AnswerCheck, RewardFunction

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
            from ..environments.sandbox import PythonSandbox, SandboxConfig

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
