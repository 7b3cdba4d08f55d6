"""The three built-in tool-call parsers."""

from __future__ import annotations

import json

import pytest

from sod_trainer.environments.base import CodeTagParser, FencedCodeParser, JSONToolCallParser, get_parser


def test_fenced_takes_the_last_python_block():
    parser = FencedCodeParser()
    text = "First\n```python\na = 1\n```\nthen\n```py\nb = 2\n```\nand text ```python\nc = 3\n```"
    assert parser(text) == "c = 3\n"
    assert parser("```python\nprint(1)```") == "print(1)"


def test_fenced_ignores_other_languages_and_unclosed_blocks():
    parser = FencedCodeParser()
    assert parser("```bash\nls\n```") is None
    assert parser("```\nprint(1)\n```") is None
    assert parser("```python\nprint(1)\n") is None  # cut off by the length budget: no call
    assert parser("The answer is \\boxed{3}.") is None


def test_fenced_accepts_windows_line_endings_and_trailing_spaces():
    assert FencedCodeParser()("```python  \r\nx = 1\r\n```") == "x = 1\r\n"


def test_code_tags():
    parser = CodeTagParser()
    assert parser.stop_strings == ("</code>",)
    assert parser("<code>a = 1</code> and <code>\nb = 2\n</code>") == "\nb = 2\n"
    assert parser("<code>unclosed") is None


def test_json_tool_call_qwen3_style():
    parser = JSONToolCallParser()
    code = 'print("</tool>")\nx = {"k": 1}'
    call = json.dumps({"name": "code_interpreter", "arguments": {"code": code}})
    assert parser(f"I will run it.\n<tool_call>\n{call}\n</tool_call>") == code


def test_json_arguments_given_as_a_json_string():
    call = json.dumps({"name": "code_interpreter", "arguments": json.dumps({"code": "1 + 1"})})
    assert JSONToolCallParser()(f"<tool_call>{call}</tool_call>") == "1 + 1"


def test_json_takes_the_last_call_and_none_without_one():
    first = json.dumps({"name": "code_interpreter", "arguments": {"code": "1"}})
    second = json.dumps({"name": "code_interpreter", "arguments": {"code": "2"}})
    assert JSONToolCallParser()(f"<tool_call>{first}</tool_call><tool_call>{second}</tool_call>") == "2"
    assert JSONToolCallParser()("no call here") is None


@pytest.mark.parametrize("body, message", [
    ('{"name": "code_interpreter", "arguments": ', "Invalid tool call JSON"),
    ('{"name": "code_interpreter"}', "Invalid tool call JSON"),
    ('{"name": "code_interpreter", "arguments": {"source": "1"}}', "Invalid tool call JSON"),
    ('["code_interpreter"]', "Invalid tool call JSON"),
    ('{"name": "web_search", "arguments": {"code": "1"}}', "Unknown tool 'web_search'"),
])
def test_json_errors_are_value_errors_with_a_message(body, message):
    with pytest.raises(ValueError, match=message):
        JSONToolCallParser()(f"<tool_call>{body}</tool_call>")


def test_custom_tool_and_argument_names():
    parser = JSONToolCallParser(tool_name="python", argument="source")
    assert parser('<tool_call>{"name": "python", "arguments": {"source": "x"}}</tool_call>') == "x"


def test_get_parser_by_name():
    assert isinstance(get_parser("fenced"), FencedCodeParser)
    assert isinstance(get_parser("code_tag"), CodeTagParser)
    assert isinstance(get_parser("json"), JSONToolCallParser)
    with pytest.raises(ValueError, match="Unknown tool_call_format 'xml'"):
        get_parser("xml")
