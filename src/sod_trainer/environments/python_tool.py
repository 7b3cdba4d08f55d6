"""PythonToolEnvironment: the paper's code-interpreter tool (SOD_SPEC §7), sandboxed."""

from __future__ import annotations

from typing import Any

from .base import DEFAULT_STEP_TIMEOUT_S, ToolCallParser, ToolEnvironment, ToolResult, get_parser
from .persistent import PersistentPythonSession
from .sandbox import ExecutionResult, PythonSandbox, SandboxConfig

__all__ = ["PythonToolEnvironment"]


class PythonToolEnvironment(ToolEnvironment):
    """Runs the tool call of each turn in the sandbox (see :mod:`sod_trainer.environments.sandbox`).

    Stateless by default, as in the paper: every call is a fresh process. With ``persistent=True``
    the calls of one trajectory share one sandboxed interpreter, so variables survive across turns;
    :meth:`reset` and :meth:`close` kill it. A turn without a tool call ends the trajectory (it is
    the final answer). The observation is the program's output (stdout, then stderr), cut to
    ``max_tool_response_chars`` head + tail. One environment serves one trajectory; environments of
    a batch may step concurrently from a thread pool.
    """

    def __init__(
        self,
        parser: ToolCallParser | str = "fenced",
        sandbox: PythonSandbox | None = None,
        sandbox_config: SandboxConfig | None = None,
        max_tool_response_chars: int = 256,
        persistent: bool = False,
    ):
        self.parser = get_parser(parser) if isinstance(parser, str) else parser
        self.sandbox = sandbox or PythonSandbox(sandbox_config)
        self.max_tool_response_chars = max_tool_response_chars
        self.persistent = persistent
        self.row: dict[str, Any] = {}
        self._session: PersistentPythonSession | None = None

    @property
    def step_timeout_s(self) -> float:
        """The engine's deadline for one call: the sandbox's own time limit plus a minute of slack (start-up of a
        persistent worker, a loaded machine). The sandbox enforces its limit itself; this only catches a stuck call."""
        config = getattr(self.sandbox, "config", None)
        if config is None:  # a sandbox of the caller's own
            return DEFAULT_STEP_TIMEOUT_S
        return float(config.timeout_s) + float(config.kill_grace_s) + 60.0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(getattr(self.parser, "stop_strings", ()))

    def reset(self, **row: Any) -> str | None:
        self.row = row
        if self._session is not None:
            self._session.close()
            self._session = None
        return None

    def _execute(self, code: str) -> ExecutionResult:
        if not self.persistent:
            return self.sandbox.run(code)
        if self._session is None:
            self._session = PersistentPythonSession(self.sandbox.config)
        return self._session.run(code)

    def step(self, turn_text: str) -> ToolResult:
        try:
            code = self.parser(turn_text)
        except ValueError as error:
            return ToolResult(observation=f"Error: {error}", done=False, error=True, tool_called=True,
                              metadata={"parse_error": True})
        if code is None:
            return ToolResult(observation=None, done=True)
        result = self._execute(code)
        observation = result.observation(self.max_tool_response_chars)
        if not observation:
            observation = "(no output)"
        return ToolResult(
            observation=observation, done=False, error=result.error, tool_called=True,
            metadata={"exit_code": result.exit_code, "timed_out": result.timed_out,
                      "duration_s": result.duration_s, "isolation": result.isolation,
                      "signal": result.signal, "output_truncated": result.output_truncated,
                      "state_reset": result.state_reset, "persistent": self.persistent,
                      "memory_exceeded": bool(result.metadata.get("memory_exceeded")),
                      "control_channel_forged": bool(result.metadata.get("control_channel_forged"))},
        )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __del__(self) -> None:  # the engine calls close(); this only covers forgotten environments
        try:
            self.close()
        except Exception:
            pass
