"""The ToolEnvironment interface: what the rollout engine needs from a tool world.

One environment object serves one trajectory. The engine calls ``reset(**row)`` once with the
dataset row (extra columns included) and ``step(turn_text)`` after every assistant turn; the
result says what the tool printed, whether the trajectory is over and whether the call failed.
Implementing a new world takes a class with these two methods (see ``docs/environments.md``).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DEFAULT_STEP_TIMEOUT_S",
    "ToolResult",
    "ToolEnvironment",
    "ToolCallParser",
    "FencedCodeParser",
    "CodeTagParser",
    "JSONToolCallParser",
    "get_parser",
]


@dataclass
class ToolResult:
    """What one assistant turn led to.

    ``observation``: the text shown to the model (``None`` when nothing is appended).
    ``done``: the trajectory ends after this turn (no tool call, or the environment says so).
    ``error``: the tool call failed (non-zero exit, traceback, timeout, kill, or a parse error).
    ``tool_called``: the turn contained a tool call. ``metadata``: anything else, logged per turn.
    """

    observation: str | None
    done: bool
    error: bool = False
    tool_called: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


DEFAULT_STEP_TIMEOUT_S = 300.0
"""How long the rollout engine waits for one ``reset``, ``step`` or ``close`` of an environment by default."""


class ToolEnvironment(ABC):
    """One trajectory's tool world. Subclass and implement :meth:`step`; :meth:`reset` is optional.

    A ``reset`` or ``step`` that raises, or that has not returned after :attr:`step_timeout_s` seconds, is
    contained by the rollout engine: that trajectory ends with an error observation, a warning is logged and the
    turn counts as a failed tool call (``tools/failure_frequency``; a hang also in ``tools/timeouts_per_trajectory``).
    """

    step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S
    """Seconds the engine waits for one call of this environment before giving up on it (the stuck thread is left
    running: Python cannot stop it). ``None`` waits forever. Set it above your tool's own time limit."""

    def reset(self, **row: Any) -> str | None:
        """Start a trajectory for dataset ``row``; may return extra text appended to the prompt."""
        return None

    @abstractmethod
    def step(self, turn_text: str) -> ToolResult:
        """React to one assistant turn (its decoded text)."""

    def close(self) -> None:
        """Release resources (worker processes, files). Called once the trajectory is finished."""


class ToolCallParser(Protocol):
    """Finds the tool call of a turn: returns the code to run, or ``None`` when the turn has none."""

    stop_strings: tuple[str, ...]

    def __call__(self, turn_text: str) -> str | None: ...


class FencedCodeParser:
    """The last ```` ```python ... ``` ```` block of the turn (default; the paper's format)."""

    stop_strings: tuple[str, ...] = ()
    _pattern = re.compile(r"```(?:python|py)[ \t]*\r?\n(.*?)```", re.DOTALL)

    def __call__(self, turn_text: str) -> str | None:
        blocks = self._pattern.findall(turn_text)
        return blocks[-1] if blocks else None


class CodeTagParser:
    """The last ``<code>...</code>`` span of the turn."""

    stop_strings: tuple[str, ...] = ("</code>",)
    _pattern = re.compile(r"<code>(.*?)</code>", re.DOTALL)

    def __call__(self, turn_text: str) -> str | None:
        blocks = self._pattern.findall(turn_text)
        return blocks[-1] if blocks else None


class JSONToolCallParser:
    """Qwen3 / hermes style ``<tool_call>{"name": ..., "arguments": {"code": ...}}</tool_call>``.

    A call that is not valid JSON, or names another tool, raises ``ValueError`` with a message the
    environment returns to the model as an error observation.
    """

    stop_strings: tuple[str, ...] = ("</tool_call>",)
    _pattern = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def __init__(self, tool_name: str = "code_interpreter", argument: str = "code"):
        self.tool_name = tool_name
        self.argument = argument

    def __call__(self, turn_text: str) -> str | None:
        calls = self._pattern.findall(turn_text)
        if not calls:
            return None
        try:
            call = json.loads(calls[-1])
            name, arguments = call["name"], call["arguments"]
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            code = arguments[self.argument]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"Invalid tool call JSON: {error}") from None
        if name != self.tool_name:
            raise ValueError(f"Unknown tool {name!r}; the only tool is {self.tool_name!r}.")
        return str(code)


def get_parser(name: str) -> ToolCallParser:
    """Built-in tool-call parsers by name: ``fenced`` (default), ``code_tag``, ``json``."""
    parsers = {"fenced": FencedCodeParser, "code_tag": CodeTagParser, "json": JSONToolCallParser}
    if name not in parsers:
        raise ValueError(f"Unknown tool_call_format {name!r}; choose one of {sorted(parsers)}.")
    return parsers[name]()
