"""PythonToolEnvironment: the paper's code-interpreter tool (SOD_SPEC §7)."""

from __future__ import annotations

from typing import Any

from .base import ToolCallParser, ToolEnvironment, ToolResult, get_parser
from .sandbox import PythonSandbox, SandboxConfig

__all__ = ["PythonToolEnvironment"]


class PythonToolEnvironment(ToolEnvironment):
    """Runs the tool call of each turn in a fresh sandboxed Python process.

    A turn without a tool call ends the trajectory (it is the final answer). The observation is the
    program's output (stdout, then stderr), cut to ``max_tool_response_chars`` head + tail.
    """

    def __init__(
        self,
        parser: ToolCallParser | str = "fenced",
        sandbox: PythonSandbox | None = None,
        sandbox_config: SandboxConfig | None = None,
        max_tool_response_chars: int = 256,
    ):
        self.parser = get_parser(parser) if isinstance(parser, str) else parser
        self.sandbox = sandbox or PythonSandbox(sandbox_config)
        self.max_tool_response_chars = max_tool_response_chars
        self.row: dict[str, Any] = {}

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(getattr(self.parser, "stop_strings", ()))

    def reset(self, **row: Any) -> str | None:
        self.row = row
        return None

    def step(self, turn_text: str) -> ToolResult:
        try:
            code = self.parser(turn_text)
        except ValueError as error:
            return ToolResult(observation=f"Error: {error}", done=False, error=True, tool_called=True,
                              metadata={"parse_error": True})
        if code is None:
            return ToolResult(observation=None, done=True)
        result = self.sandbox.run(code)
        observation = result.observation(self.max_tool_response_chars)
        if not observation:
            observation = "(no output)"
        return ToolResult(
            observation=observation, done=False, error=result.error, tool_called=True,
            metadata={"exit_code": result.exit_code, "timed_out": result.timed_out,
                      "duration_s": result.duration_s, "isolation": result.isolation},
        )
