"""PythonToolEnvironment: one trajectory's code interpreter, stateless or persistent."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sod_trainer.environments import PythonToolEnvironment, SandboxConfig, ToolEnvironment
from sod_trainer.environments.base import JSONToolCallParser


def turn(code: str) -> str:
    return f"Let me compute.\n```python\n{code}\n```"


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "sandboxes"
    root.mkdir()
    return SandboxConfig(timeout_s=1.5, temp_root=str(root))


def test_is_a_tool_environment(config):
    environment = PythonToolEnvironment(sandbox_config=config)
    assert isinstance(environment, ToolEnvironment)
    assert environment.reset(question="1+1?", answer="2") is None and environment.row["answer"] == "2"


def test_a_tool_call_returns_its_output(config):
    environment = PythonToolEnvironment(sandbox_config=config)
    result = environment.step(turn("x = 6\nx * 7"))
    assert result.observation == "42" and result.tool_called and not result.done and not result.error
    assert result.metadata["exit_code"] == 0 and result.metadata["isolation"] in ("bwrap", "bwrap-userns", "rlimits")
    assert result.metadata["persistent"] is False


def test_a_turn_without_a_tool_call_ends_the_trajectory(config):
    result = PythonToolEnvironment(sandbox_config=config).step("So the answer is \\boxed{42}.")
    assert result.done and result.observation is None and not result.tool_called and not result.error


def test_errors_and_timeouts_are_flagged(config):
    environment = PythonToolEnvironment(sandbox_config=config)
    failed = environment.step(turn("1 / 0"))
    assert failed.error and "ZeroDivisionError" in failed.observation and not failed.done
    started = time.monotonic()
    hung = environment.step(turn("while True:\n    pass"))
    assert hung.error and hung.metadata["timed_out"] and "TimeoutError" in hung.observation
    assert time.monotonic() - started < 1.5 + 2.0


def test_silent_code_says_so(config):
    assert PythonToolEnvironment(sandbox_config=config).step(turn("x = 1")).observation == "(no output)"


def test_observation_is_cut_head_and_tail(config):
    environment = PythonToolEnvironment(sandbox_config=config, max_tool_response_chars=64)
    result = environment.step(turn("print('start')\nfor i in range(1000):\n    print(i)\nprint('end')"))
    assert len(result.observation) <= 64 and result.observation.startswith("start\n0\n")
    assert result.observation.endswith("999\nend") and "...(truncated)..." in result.observation


def test_json_tool_calls_and_parse_errors(config):
    environment = PythonToolEnvironment(parser="json", sandbox_config=config)
    assert environment.stop_strings == ("</tool_call>",)
    call = '<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(2 ** 10)"}}</tool_call>'
    assert environment.step(call).observation == "1024"
    broken = environment.step('<tool_call>{"name": "code_interpreter", "arguments": </tool_call>')
    assert broken.error and broken.tool_called and not broken.done and broken.metadata["parse_error"]
    assert broken.observation.startswith("Error: Invalid tool call JSON")
    custom = PythonToolEnvironment(parser=JSONToolCallParser(tool_name="python"), sandbox_config=config)
    assert "Unknown tool 'code_interpreter'" in custom.step(call).observation


def test_stateless_by_default(config):
    environment = PythonToolEnvironment(sandbox_config=config)
    environment.step(turn("secret = 1"))
    assert "NameError" in environment.step(turn("secret")).observation


def test_persistent_mode_keeps_variables_within_a_trajectory(config):
    environment = PythonToolEnvironment(sandbox_config=config, persistent=True)
    environment.reset(question="q")
    assert environment.step(turn("total = 40")).observation == "(no output)"
    assert environment.step(turn("total += 2\ntotal")).observation == "42"
    assert environment.step(turn("total")).metadata["persistent"] is True
    environment.reset(question="next")  # a new trajectory starts from scratch
    assert "NameError" in environment.step(turn("total")).observation
    environment.close()
    assert environment._session is None


def test_persistent_mode_recovers_after_a_kill(config):
    environment = PythonToolEnvironment(sandbox_config=config, persistent=True)
    environment.step(turn("x = 1"))
    killed = environment.step(turn("import os\nos._exit(1)"))
    assert killed.error and killed.metadata["state_reset"] and "variables from earlier calls were lost" in killed.observation
    assert environment.step(turn("1 + 1")).observation == "2"
    environment.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_environments_of_a_batch_step_concurrently(config, persistent):
    environments = [PythonToolEnvironment(sandbox_config=config, persistent=persistent) for _ in range(6)]
    for index, environment in enumerate(environments):
        environment.reset(index=index)
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda pair: pair[1].step(turn(f"import time\ntime.sleep(0.8)\n{pair[0]} * 10")),
                                enumerate(environments)))
    elapsed = time.monotonic() - started
    assert [r.observation for r in results] == [str(i * 10) for i in range(6)]
    assert elapsed < 3.5  # about 4.8 s if the calls were serialized
    for environment in environments:
        environment.close()
